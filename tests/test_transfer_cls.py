"""Gradient transfer on chest X-rays (classification.py): OCTL's per-group optimizer
state, MMTL's mixed batches, the AUC table, one `cxr_smoke` run end to end on written
CheXpert and ChestX-ray14 folders (resumed after a kill), and input errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from conftest import REPO, kill_after_checkpoint, run_train, set_fields
from medda_jax.config_utils import load_config
from medda_jax.data import chestxray
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.gradient_transfer import classification as cls
from medda_jax.methods.gradient_transfer import report_cls
from medda_jax.optim import transfer as transfer_opt

CONFIG = "configs/transfer.py:cxr_smoke"


def config(variant: str = "cxr_smoke"):
  return load_config(f"{REPO / 'configs' / 'transfer.py'}:{variant}")

PATIENTS = 12  # per dataset, two images each


# --------------------------------------------------------------------------- fixture data
def _image(path: pathlib.Path, bright: bool, seed: int) -> None:
  """A 40 x 40 8-bit image; a bright square where the finding is present."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  array = rng.integers(0, 120, size=(40, 40)).astype(np.uint8)
  if bright:
    array[10:30, 10:30] = 230
  Image.fromarray(array).save(path)


def write_chestxray14(root: pathlib.Path) -> pathlib.Path:
  """ChestX-ray14's layout: Data_Entry_2017.csv, the two split lists, images/ (PNG)."""
  root.mkdir(parents=True)
  rows, names = [], []
  for p in range(PATIENTS):
    for k in range(2):
      name = f"{p + 1:08d}_{k:03d}.png"
      findings = ["Effusion"] if (p + k) % 2 else []
      if p % 3 == 0:
        findings.append("Cardiomegaly")
      rows.append((name, "|".join(findings) or "No Finding", p + 1))
      names.append(name)
      _image(root / "images" / name, "Effusion" in findings, seed=100 * p + k)
  with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
    f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
    for k, (name, findings, patient) in enumerate(rows):
      f.write(f"{name},{findings},{k},{patient},58,M,PA,2682,2749,0.143,0.143\n")
  (root / "train_val_list.txt").write_text("\n".join(names[:18]) + "\n")
  (root / "test_list.txt").write_text("\n".join(names[18:]) + "\n")
  return root


def _chexpert_csv(path: pathlib.Path, rows) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                     *chestxray.CHEXPERT_LABELS])
    for rel, frontal, values in rows:
      writer.writerow([rel, "Female", 60, "Frontal" if frontal else "Lateral",
                       "AP" if frontal else ""]
                      + [values.get(name, "") for name in chestxray.CHEXPERT_LABELS])


def write_chexpert(parent: pathlib.Path, folder: str = "CheXpert-v1.0-small") -> pathlib.Path:
  """CheXpert's layout: train.csv / valid.csv whose Path starts with the release folder,
  train/patientNNNNN/studyN/viewN_frontal.jpg; one lateral view (dropped: frontal only)."""
  root = parent / folder
  train, valid = [], []
  for p in range(PATIENTS + 1):
    split, rows = ("valid", valid) if p == PATIENTS else ("train", train)
    for k in range(2):
      values = {"Pleural Effusion": "1.0" if (p + k) % 2 else "0.0",
                "Edema": "-1.0" if p % 4 == 0 else "", "No Finding": ""}
      rel = f"{split}/patient{p + 1:05d}/study{k + 1}/view1_frontal.jpg"
      _image(root / rel, values["Pleural Effusion"] == "1.0", seed=7000 + 10 * p + k)
      rows.append((f"{folder}/{rel}", True, values))
  lateral = "train/patient00001/study1/view2_lateral.jpg"
  _image(root / lateral, False, seed=1)
  train.append((f"{folder}/{lateral}", False, {"Edema": "1.0"}))
  _chexpert_csv(root / "train.csv", train)
  _chexpert_csv(root / "valid.csv", valid)
  return root


@pytest.fixture(scope="module")
def cxr_data(tmp_path_factory):
  parent = tmp_path_factory.mktemp("cxr_data")
  return {"chexpert": write_chexpert(parent), "chestxray14": write_chestxray14(parent / "nih")}


def _data_flags(data) -> list[str]:
  return [f"--config.data.dirs.{name}={root}" for name, root in data.items()]


def smoke_config(data, **data_fields):
  c = config()
  for name, root in data.items():
    c.data.dirs[name] = str(root)
  for field, value in data_fields.items():
    c.data[field] = value
  return c


# --------------------------------------------------------------------------- OCTL state
def _params():
  """A parameter tree shaped like MultiHeadDenseNet's, small so the optax graphs compile fast."""
  rng = np.random.default_rng(1)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  return {"features": {"conv0": {"kernel": leaf(3, 3, 1, 4)},
                       "norm0": {"scale": leaf(4), "bias": leaf(4)},
                       "denseblock1": {"denselayer1": {"conv1": {"kernel": leaf(1, 1, 4, 2)}}},
                       "transition1": {"conv": {"kernel": leaf(1, 1, 6, 3)}},
                       "norm5": {"scale": leaf(3), "bias": leaf(3)}},
          "source_head": {"kernel": leaf(3, 14), "bias": leaf(14)},
          "target_head": {"kernel": leaf(3, 5), "bias": leaf(5)}}


def _adam(state, group: str):
  """The Adam moments (ScaleByAdamState) of one `multi_transform` group."""
  return transfer_opt.moment_states(state.inner_states[group])[0]


def _b1(state, group: str) -> float:
  injected = [x for x in jax.tree.leaves(
      state.inner_states[group], is_leaf=lambda x: hasattr(x, "hyperparams"))
      if hasattr(x, "hyperparams")]
  return float(injected[0].hyperparams["b1"])


def test_octl_continues_the_backbone_moments_and_starts_a_fresh_head():
  c = config()
  params = _params()
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
           for _ in range(3)]
  # Pre-training: two updates; plain optax Adam on the same gradients is the reference.
  pre_tx = cls.optimizer(c, params, "pretrain", train_head=False)
  pre_state = jax.jit(pre_tx.init)(params)  # jitted: op-by-op optax compiles every op
  plain = optax.scale_by_adam()
  plain_state = plain.init(params)
  for g in grads[:2]:
    _, pre_state = jax.jit(pre_tx.update)(g, pre_state, params)
    _, plain_state = plain.update(g, plain_state)

  tx = cls.optimizer(c, params, "finetune", continuation=True, source_state=pre_state)
  state = jax.jit(tx.init)(params)
  backbone, head = _adam(state, "backbone"), _adam(state, "head")
  assert int(_adam(pre_state, "backbone").count) == 2
  assert int(backbone.count) == 100  # "start from step 100"
  assert _b1(state, "backbone") == pytest.approx(0.99) and _b1(state, "head") == pytest.approx(0.9)
  for part in ("features", "source_head"):  # continued: the source's moments, unchanged
    for got, want in ((backbone.mu[part], plain_state.mu[part]),
                      (backbone.nu[part], plain_state.nu[part])):
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)  # float32 b2
  # The new head: a fresh Adam state exactly as plain optax makes it (count 0, zeros).
  fresh = optax.scale_by_adam().init(params["target_head"])
  assert int(head.count) == int(fresh.count) == 0
  for got, want in ((head.mu["target_head"], fresh.mu), (head.nu["target_head"], fresh.nu)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, b)

  # One update, NumPy reference: the head moves as a fresh Adam at t = 1 (lr * g / |g|),
  # the backbone as Adam continued from (M, V) with beta1 = 0.99 at t = 101.
  g = grads[2]
  updates, _ = jax.jit(tx.update)(g, state, params)
  lr = c.finetune.learning_rate
  gh = np.asarray(g["target_head"]["kernel"])
  np.testing.assert_allclose(updates["target_head"]["kernel"], -lr * gh / (np.abs(gh) + 1e-8),
                             rtol=1e-5)
  m0 = np.asarray(plain_state.mu["features"]["conv0"]["kernel"])
  v0 = np.asarray(plain_state.nu["features"]["conv0"]["kernel"])
  gb = np.asarray(g["features"]["conv0"]["kernel"])
  m = 0.99 * m0 + 0.01 * gb
  v = 0.999 * v0 + 0.001 * gb ** 2
  want = -lr * (m / (1 - 0.99 ** 101)) / (np.sqrt(v / (1 - 0.999 ** 101)) + 1e-8)
  np.testing.assert_allclose(updates["features"]["conv0"]["kernel"], want, rtol=1e-4,
                             atol=1e-7)


def test_pretraining_leaves_the_target_head_and_ftf_freezes_later_layers():
  c = config()
  params = _params()
  g = jax.tree.map(jnp.ones_like, params)
  tx = cls.optimizer(c, params, "pretrain", train_head=False)
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(g, params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["target_head"]))
  assert all(float(jnp.abs(u).min()) > 0 for u in jax.tree.leaves(updates["features"]))
  tx = cls.optimizer(c, params, "finetune",
                     backbone_trainable=cls.first_layers_mask(params, ("conv0", "norm0")))
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(g, params)
  moved = {k: float(jnp.abs(u).max()) > 0
           for k, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
  for path, did in moved.items():
    names = [p.key for p in path]
    want = names[0] == "target_head" or names[1] in ("conv0", "norm0")
    assert did == want, names


# --------------------------------------------------------------------------- MMTL batches
def _table(n: int, k: int, offset: float) -> chestxray.ImageLabelTable:
  return chestxray.ImageLabelTable(
      root=pathlib.Path("."), paths=tuple(f"{i}.png" for i in range(n)),
      labels=(offset + np.arange(n * k, dtype=np.float32)).reshape(n, k),
      label_names=tuple(f"l{j}" for j in range(k)), patient_ids=tuple(map(str, range(n))))


def test_mmtl_batches_mix_target_first_with_the_scheduled_count(monkeypatch):
  # Images stand for their row: the table's image of row r is filled with r.
  monkeypatch.setattr(chestxray, "read_images",
                      lambda table, idx, size: np.full((1, size, size, 1), idx[0], np.float32))
  source = cls.Pool(_table(50, 3, 1000.0), np.arange(50))
  target = cls.Pool(_table(20, 2, 0.0), np.array([2, 5, 11]))
  cfg = cls.BatchConfig(batch_size=8, steps_per_epoch=2, num_epochs=12, schedule="code",
                        image_size=2, seed=3)
  for step in (0, 1, 2, 9, 23):
    b = cls.mixed_batch(step, source, target, cfg, (3, 2))
    n_t = min(step // 2 // 4 + 1, 8)  # the reference code's schedule, by hand
    np.testing.assert_array_equal(b["is_target"], np.arange(8) < n_t)
    rows = b["images"][:, 0, 0, 0].astype(int)
    assert set(rows[:n_t]) <= {2, 5, 11}
    for i in range(8):
      r = rows[i]
      if i < n_t:
        np.testing.assert_array_equal(b["target_labels"][i], target.table.labels[r])
        assert np.isnan(b["source_labels"][i]).all()
      else:
        np.testing.assert_array_equal(b["source_labels"][i], source.table.labels[r])
        assert np.isnan(b["target_labels"][i]).all()
    again = cls.mixed_batch(step, source, target, cfg, (3, 2))  # a pure function of the step
    np.testing.assert_array_equal(again["images"], b["images"])
  # Two processes read complementary halves of the same batch.
  whole = cls.mixed_batch(9, source, target, cfg, (3, 2))
  halves = [cls.mixed_batch(9, source, target, cfg, (3, 2), i, 2) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves]), whole["images"])
  only = cls.mixed_batch(0, None, target, dataclasses.replace(cfg, schedule="target_only"),
                         (3, 2))
  assert only["is_target"].all() and only["source_labels"].shape == (8, 3)


def test_masked_bce_scores_each_image_on_its_own_labels():
  logits = jnp.array([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7]])
  labels = jnp.array([[1.0, np.nan, 0.0], [np.nan, np.nan, np.nan]])
  got = np.asarray(cls.masked_bce(logits, labels))
  bce = lambda z, y: -(y * np.log(1 / (1 + np.exp(-z)))  # noqa: E731
                       + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
  np.testing.assert_allclose(got, [(bce(0.3, 1.0) + bce(2.0, 0.0)) / 2, 0.0], rtol=1e-5)


# --------------------------------------------------------------------------- table
def test_auc_table_is_mean_and_std_over_seeds():
  c = config()
  rng = np.random.default_rng(0)
  results = {}
  for src, tgt in c.data.pairs:
    for budget in c.budgets:
      for method in c.methods:
        for seed in c.seeds:
          results[f"adam/{src}->{tgt}/{budget}/{method}/{seed}"] = {
              "target": {"auc": float(rng.uniform(50, 90))}}
  table = report_cls.summarise(results, c)
  assert list(table) == ["chexpert->chestxray14", "chestxray14->chexpert"]
  for direction, rows in table.items():
    assert list(rows) == [str(b) for b in c.budgets]
    for budget, row in rows.items():
      assert list(row) == list(c.methods)
      for method, (mean, std, n) in row.items():
        vals = [results[f"adam/{direction}/{budget}/{method}/{s}"]["target"]["auc"]
                for s in c.seeds]
        assert n == len(c.seeds)
        assert mean == pytest.approx(sum(vals) / len(vals))
        assert std == pytest.approx((sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5)
  md = report_cls.tables_markdown(table, c, report_cls.label(c, cls.user_datasets(c)))
  assert "CheXpert -> ChestX-ray14" in md and "ChestX-ray14 -> CheXpert" in md
  assert md.count("| 4 |") == 2 and md.count("| 8 |") == 2
  assert "| images | FTA | FTF | L2SP | OCTL | MMTL |" in md
  assert "not a reproduction" in md


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cxr_run(tmp_path_factory, cxr_data):
  workdir = tmp_path_factory.mktemp("cxr_run")
  proc = run_train(workdir, *_data_flags(cxr_data), config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_smoke_run_writes_the_auc_tables(cxr_run, cxr_data):
  workdir, proc = cxr_run
  c = smoke_config(cxr_data)
  final = json.loads(proc.stdout)
  results = json.loads((workdir / cls.RESULTS_FILE).read_text())
  # 2 directions x 2 seeds x 2 budgets x 5 methods
  assert len(results) == 2 * 2 * 2 * 5
  table = json.loads((workdir / "results.json").read_text())["table"]
  for direction in ("chexpert->chestxray14", "chestxray14->chexpert"):
    for budget in c.budgets:
      for method in c.methods:
        # The table is the seeds' mean of the recorded runs; every run was scored on
        # labels of both classes (the fixture's test split has them).
        per_seed = [results[f"adam/{direction}/{budget}/{method}/{s}"] for s in c.seeds]
        assert all(r["target_images"] == budget for r in per_seed)
        aucs = [r["target"]["auc"] for r in per_seed]
        assert all(0.0 <= a <= 100.0 for a in aucs)
        assert final[f"target_auc/{direction}/{budget}/{method}"] == pytest.approx(
            np.mean(aucs))
        assert table[direction][str(budget)][method][0] == pytest.approx(np.mean(aucs))
        for r in per_seed:
          scored = [a for a in r["target"]["per_label"] if a is not None]
          assert scored and r["target"]["auc"] == pytest.approx(np.mean(scored))
  md = (workdir / "results.md").read_text()
  assert "paper Table 5" in md and "not a reproduction" in md
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  stages = {r["stage"] for r in records}
  assert "pretrain_chexpert_to_chestxray14_seed1" in stages
  assert any("/mmtl/" in s for s in stages)
  # one cached array of decoded test images per target dataset
  assert len(list((workdir / "cache").glob("cxr_test_32_*.npy"))) == 2


def test_killed_run_resumes_to_the_same_table(cxr_run, cxr_data, tmp_path):
  reference, _ = cxr_run
  killed = tmp_path / "killed"
  child = run_train(killed, *_data_flags(cxr_data), config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "checkpoints" / "pretrain_chexpert_to_chestxray14_seed0")
  proc = run_train(killed, *_data_flags(cxr_data), config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / cls.RESULTS_FILE).read_text())
  want = json.loads((reference / cls.RESULTS_FILE).read_text())
  assert got.keys() == want.keys()
  for key in want:
    assert got[key]["target"]["auc"] == pytest.approx(want[key]["target"]["auc"], abs=1e-3)
    assert got[key]["final_loss"] == pytest.approx(want[key]["final_loss"], rel=1e-4)


# --------------------------------------------------------------------------- errors
def test_both_variants_load_and_name_the_paper_table():
  from medda_jax import config_utils as cu
  for variant in ("cxr", "cxr_smoke"):
    c = config(variant)
    cu.validate_shared(c)
    assert c.task == "classification" and c.variant == variant
  paper = config("cxr")
  assert paper.budgets == (128, 256, 512, 1024) and paper.pretrain.learning_rate == 1e-4
  assert paper.finetune.learning_rate == 1e-4 and tuple(paper.model.block_sizes) == (6, 12, 24, 16)
  assert "task" not in load_config(str(REPO / "configs" / "transfer.py"))  # segmentation
  source = (REPO / "configs" / "transfer.py").read_text()
  assert "Table 5" in source[source.index("def _cxr("):]


@pytest.mark.parametrize("field, value, message", [
    ("data.pairs", (("chexpert", "mimic"),), "must be two different datasets"),
    ("budgets", (4, 0), "config.budgets entry 0"),
    ("methods", ("fta", "spottune"), "config.methods has unknown entries ['spottune']"),
    ("data.image_size", 2, "config.data.image_size=2 is out of range"),
    ("data.test_fraction", 1.0, "leaves no training images"),
])
def test_config_mistakes_are_one_line_config_errors(cxr_data, field, value, message):
  with pytest.raises(ConfigError) as e:
    cls.validate(set_fields(smoke_config(cxr_data), {field: value}))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_data_is_named(cxr_data, tmp_path):
  from medda_jax.methods import gradient_transfer  # what train.py calls: routes by task
  c = smoke_config(cxr_data)
  c.data.dirs.chestxray14 = ""
  with pytest.raises(ConfigError, match="config.data.dirs.chestxray14 must name"):
    gradient_transfer.validate(c)
  c.data.dirs.chestxray14 = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="is not a folder"):
    cls.validate(c)
  broken = write_chestxray14(tmp_path / "broken")
  (broken / "images" / "00000003_001.png").unlink()
  c = smoke_config(dict(cxr_data, chestxray14=broken))
  with pytest.raises(DataError, match="00000003_001.png"):
    cls.Experiment(c, tmp_path / "w")
  c = smoke_config(cxr_data)
  c.budgets = (4, 500)
  with pytest.raises(ConfigError, match="asks for 500 target images"):
    cls.Experiment(c, tmp_path / "w2")


# --------------------------------------------------------------------------- a user's dataset
def _user_csv(folder: pathlib.Path, rows, header=("path", "patient_id", "Nodule", "Effusion")):
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])
  return folder / "labels.csv"


def write_user_site(folder: pathlib.Path) -> pathlib.Path:
  """A user's manifest: 10 patients x 2 PNGs, Effusion where the square is bright, Nodule
  every third patient; one uncertain and one unlabelled value."""
  rows = []
  for p in range(10):
    for k in range(2):
      name = f"scans/p{p}_{k}.png"
      effusion = (p + k) % 2
      _image(folder / name, bool(effusion), seed=700 + 10 * p + k)
      nodule = "-1" if (p, k) == (0, 0) else ("" if (p, k) == (0, 1) else str(int(p % 3 == 0)))
      rows.append((name, f"P{p}", nodule, str(effusion)))
  return _user_csv(folder, rows)


def test_user_manifest_reads_labels_patients_and_paths(tmp_path):
  manifest = write_user_site(tmp_path / "site")
  table = chestxray.load_user("mysite", manifest, uncertain="ones")
  assert table.label_names == ("Nodule", "Effusion") and len(table) == 20
  assert table.root == tmp_path / "site" and table.paths[3] == "scans/p1_1.png"
  assert table.patient_ids[:4] == ("P0", "P0", "P1", "P1")
  assert table.labels[0, 0] == 1.0 and np.isnan(table.labels[1, 0])  # uncertain, blank
  assert table.labels[2:, 0].tolist() == [float(p % 3 == 0) for p in range(1, 10) for _ in "ab"]
  assert table.labels[:, 1].tolist() == [float((p + k) % 2) for p in range(10) for k in (0, 1)]
  assert chestxray.load_user("mysite", manifest, uncertain="zeros").labels[0, 0] == 0.0
  assert np.isnan(chestxray.load_user("mysite", manifest, uncertain="ignore").labels[0, 0])
  image = chestxray.read_images(table, [1], 16)
  assert image.shape == (1, 16, 16, 1) and image[0, 8, 8, 0] > 0.85  # p0_1: bright square
  # absolute paths, and no patient column: every image is its own patient
  absolute = _user_csv(tmp_path / "abs", [(str(tmp_path / "site" / "scans/p2_0.png"), "1")],
                       header=("path", "Effusion"))
  single = chestxray.load_user("abs", absolute)
  assert single.patient_ids == single.paths and chestxray.read_images(single, [0], 8).shape[0] == 1


def test_user_class_folders_are_one_label_per_class(tmp_path):
  for cls_name, n in (("normal", 2), ("pneumonia", 3)):
    for i in range(n):
      _image(tmp_path / "root" / cls_name / f"{i}.png", cls_name == "pneumonia", seed=i)
  table = chestxray.load_user("folders", tmp_path / "root")
  assert table.label_names == ("normal", "pneumonia")
  assert table.labels.tolist() == [[1, 0]] * 2 + [[0, 1]] * 3


@pytest.mark.parametrize("rows, header, message", [
    ([("a.png", "2")], ("path", "Effusion"), "Effusion is '2'; expected 1, 0, -1"),
    ([("a.png", "P1")], ("path", "patient_id"), "has no label column"),
    ([("missing.png", "1")], ("path", "Effusion"), "missing.png"),
    ([("a.png", "1")], ("file", "Effusion"), "lacks column(s) ['path']"),
    ([], ("path", "Effusion"), "lists no image"),
])
def test_user_manifest_mistakes_are_one_line_errors(tmp_path, rows, header, message):
  _image(tmp_path / "m" / "a.png", False, 0)
  manifest = _user_csv(tmp_path / "m", rows, header)
  with pytest.raises(DataError) as e:
    chestxray.load_user("mysite", manifest)
  assert message in str(e.value)
  assert "\n" not in str(e.value).split("\nexpected")[0]  # the layout hint may follow


def test_user_entries_are_checked(cxr_data, tmp_path):
  c = smoke_config(cxr_data)
  c.data.user = ("chexpert=/x.csv",)
  with pytest.raises(ConfigError, match="the name chexpert is taken"):
    cls.validate(c)
  c.data.user = ("mysite",)
  with pytest.raises(ConfigError, match="must be 'name=path'"):
    cls.validate(c)
  c.data.user = (f"mysite={tmp_path / 'none.csv'}",)
  c.data.pairs = (("chexpert", "mysite"),)
  with pytest.raises(ConfigError, match="names no file or folder"):
    cls.validate(c)
  c.data.pairs = (("chexpert", "theirsite"),)
  with pytest.raises(ConfigError, match=r"of \['chexpert', 'chestxray14', 'mysite'\]"):
    cls.validate(c)


def test_a_user_manifest_is_a_target_whose_name_the_results_carry(cxr_data, tmp_path):
  manifest = write_user_site(tmp_path / "site")
  workdir = tmp_path / "run"
  proc = run_train(workdir, *_data_flags({"chexpert": cxr_data["chexpert"]}), config=CONFIG,
                   *[f"--config.data.user=('mysite={manifest}',)",
                     "--config.data.pairs=(('chexpert','mysite'),)", "--config.seeds=(0,)",
                     "--config.budgets=(8,)", "--config.methods=('fta','octl')"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / cls.RESULTS_FILE).read_text())
  assert sorted(results) == ["adam/chexpert->mysite/8/fta/0", "adam/chexpert->mysite/8/octl/0"]
  # The target head has the manifest's two labels; the AUC is their mean over those the
  # test split holds both classes of, recomputed here from the saved per-label scores.
  for run in results.values():
    assert len(run["target"]["per_label"]) == 2
    scored = [a for a in run["target"]["per_label"] if a is not None]
    assert scored and run["target"]["auc"] == pytest.approx(np.mean(scored))
  md = (workdir / "results.md").read_text()
  assert "#### CheXpert -> mysite" in md and f"your data: mysite ({manifest})" in md
  assert "ChestX-ray14" not in md  # not used by this run
  c = smoke_config(cxr_data)
  c.variant, c.data.user, c.data.pairs = "cxr", (f"mysite={manifest}",), (("chexpert", "mysite"),)
  assert "not a reproduction" in report_cls.label(c, cls.user_datasets(c))
