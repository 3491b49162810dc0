"""DiRA's study end to end on its smoke config (one shared run): each stage started from its
parent's checkpoint, transfer grafting by strategy, tables and figures, kill -9 and rerun,
config mistakes, your corpus and your targets. The stage runs' order and the reading of
your volumes are tested once, in test_dira_pretrain.py."""

from __future__ import annotations

import json

import flax
import numpy as np
import pytest

from conftest import config_with, kill_after_checkpoint, run_train, shared_run
from medda_jax.config_utils import load_config
from medda_jax.errors import ConfigError
from medda_jax.methods.dira import experiment
from medda_jax.methods.dira.pretrain import Pretrainer, run_name, stage_runs
from test_dira_pretrain import _write_volumes  # the same three volumes (NIfTI and .mhd)

CONFIG = "configs/dira.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"

dira_run = shared_run(CONFIG, name="dira_run")


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_smoke_writes_tables_and_figures_labelled_as_demo(dira_run):
  workdir, _ = dira_run
  c = load_config(CONFIG)
  results = json.loads((workdir / "results.json").read_text())
  assert "DEMO DATA" in results["label"]
  assert list(results["table"]) == experiment.inits(c)
  assert results["metrics"] == {"hippocampus_cls": "auc", "hippocampus_seg": "iou"}
  runs = json.loads((workdir / experiment.RESULTS_FILE).read_text())
  for task in c.tasks:
    for chain in stage_runs(c.strategies):
      curve = runs[f"pretrain/{run_name(task, chain)}"]["curve"]
      assert len(curve) == 2 and all(np.isfinite(curve)), (task, chain)
  md = (workdir / "results.md").read_text()
  assert "| jigsaw ((D)+R)+A |" in md and "hippocampus_seg (IOU)" in md
  for name in ("restorations.png", "transfer.png"):
    assert (workdir / name).read_bytes()[:8] == PNG, name


def test_each_stage_starts_from_its_parents_checkpoint(dira_run, tmp_path):
  """A DR stage run with a vanishing learning rate ends where it started: the D run's
  encoder and head read back from its checkpoint, and a fresh decoder."""
  workdir, _ = dira_run
  c = config_with(CONFIG, "pretrain.learning_rate", 1e-12)
  s = experiment.settings(c)
  reference = Pretrainer(s, experiment.demo_corpus(c), "demo", workdir)
  saved_d = reference.saved("rotation", ("D",))
  fresh = Pretrainer(s, experiment.demo_corpus(c), "demo", tmp_path)
  dr, _ = fresh.run("rotation", ("D", "DR"), saved_d)
  start = _flat(fresh.init("rotation", ("D", "DR"), s.seed))
  for path, value in _flat(dr).items():
    want = _flat(saved_d).get(path, start[path])
    np.testing.assert_allclose(value, want, atol=1e-8, err_msg=path)
  assert "decoder" in dr and "decoder" not in saved_d


@pytest.mark.parametrize("kind, decoder", [("segmentation", True), ("segmentation", False),
                                           ("classification", False)])
def test_transfer_takes_the_encoder_and_the_decoder_where_the_strategy_trained_one(
    dira_run, kind, decoder):
  workdir, _ = dira_run
  c = load_config(CONFIG)
  pre = Pretrainer(experiment.settings(c), experiment.demo_corpus(c), "demo", workdir)
  pretrained = pre.saved("rotation", ("D", "DR"))
  net = experiment.target_net(c, kind)
  fresh = _flat(experiment.transfer_init(c, net, kind, None, False, seed=0))
  got = _flat(experiment.transfer_init(c, net, kind, pretrained, decoder, seed=0))
  source = _flat(pretrained)
  assert set(got) == set(fresh)
  for path, value in got.items():
    from_source = path.startswith("encoder/") or (
        decoder and path.startswith("decoder/") and not path.startswith("decoder/output/"))
    np.testing.assert_array_equal(value, source[path] if from_source else fresh[path],
                                  err_msg=path)


def test_killed_run_resumes_to_the_same_results(dira_run, tmp_path):
  """kill -9 in the adversarial stage run, then in a fine-tuning run: the rerun ends with
  the same curves and test scores as the uninterrupted run."""
  reference, _ = dira_run
  killed = tmp_path / "killed"
  one = ("--config.tasks=('rotation',)",)
  child = run_train(killed, *one, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "pretrain" / "rotation_D-DR-DRA")
  child = run_train(killed, *one, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "finetune" / "hippocampus_cls_random_0")
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *one, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / experiment.RESULTS_FILE).read_text())
  want = json.loads((reference / experiment.RESULTS_FILE).read_text())
  for chain in stage_runs(load_config(CONFIG).strategies):
    key = f"pretrain/{run_name('rotation', chain)}"
    np.testing.assert_allclose(got[key]["curve"], want[key]["curve"], rtol=1e-5, err_msg=key)
  for key, value in got.items():
    if not key.startswith("pretrain/"):
      np.testing.assert_allclose(value["test"], want[key]["test"], atol=1e-6, err_msg=key)


@pytest.mark.parametrize("field, value, message", [
    ("tasks", ("simclr",), "unknown entries"),
    ("pretrain.transvw.border", 0.5, "out of range"),
    ("pretrain.transvw.instances", 0, "out of range"),
    ("strategies", ("R",), "unknown entries"),
    ("targets", ("liver",), "unknown entries"),
    ("pretrain.size", 18, "must be a multiple of"),
    ("pretrain.lambda_a", -1.0, "out of range"),
    ("model.head_pool", "max", "is not allowed"),
    ("transfer.segmentation.loss", "focal", "is not allowed"),
    ("transfer.classification.epochs", 0, "out of range"),
    ("transfer.label_fractions", (0.5,), "include 1.0"),
    ("transfer.label_fractions", (1.0, 1.5), "shares in \\(0, 1\\]"),
])
def test_config_mistakes_are_named(field, value, message):
  with pytest.raises(ConfigError, match=message):
    experiment.validate(config_with(CONFIG, field, value))


def test_the_jigsaw_table_is_stored_with_the_run(dira_run):
  workdir, _ = dira_run
  c = load_config(CONFIG)
  saved = np.load(workdir / "pretrain" / "jigsaw_D" / "permutations.npy")
  pre = Pretrainer(experiment.settings(c), experiment.demo_corpus(c), "demo", workdir)
  np.testing.assert_array_equal(saved, pre.table)
  assert saved.shape == (c.pretrain.permutations, 8)


# --------------------------------------------------------------------------- your volumes
def test_your_corpus_is_named_and_bad_paths_are_one_line_errors(tmp_path):
  from medda_jax.errors import DataError
  from medda_jax.methods.dira import volumes
  _write_volumes(tmp_path / "vols")
  c = config_with(CONFIG, "data.user", (f"ours={tmp_path / 'vols'}",))
  c.data.corpus = "ours"
  experiment.validate(c)
  cubes, name = experiment.corpus(c)
  assert name == "ours (3 volumes)" and cubes(np.arange(2)).shape == (2, 16, 16, 16)
  assert experiment.data_label(c).startswith("pre-training corpus: ours")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="holds no volume"):
    volumes.list_volumes(tmp_path / "empty")
  c.data.corpus = "luna16"
  with pytest.raises(ConfigError, match="data.dirs.luna16"):
    experiment.validate(c)


# --------------------------------------------------------------------------- your targets
def _write_segmentation_manifest(folder):
  import nibabel as nib
  folder.mkdir()
  rng = np.random.default_rng(1)
  rows = ["image,mask"]
  for k in range(4):
    image = rng.normal(0, 300, (24, 20, 22)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[6 + k:14 + k, 5:13, 7:15] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / f"case{k}.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / f"case{k}_mask.nii.gz"))
    rows.append(f"case{k}.nii.gz,case{k}_mask.nii.gz")
  (folder / "ours.csv").write_text("\n".join(rows) + "\n")
  return folder / "ours.csv"


def test_your_target_runs_end_to_end_and_names_its_column(tmp_path):
  """A manifest target of your volumes: cut into workdir/targets/, fine-tuned, and the
  tables carry its name; with your corpus too, nothing is labelled demo data."""
  manifest = _write_segmentation_manifest(tmp_path / "data")
  _write_volumes(tmp_path / "vols")
  c = config_with(CONFIG, "data.user_targets", (f"ours_seg={manifest}",))
  c.data.user = (f"ours_ct={tmp_path / 'vols'}",)
  c.data.corpus, c.targets = "ours_ct", ("ours_seg",)
  c.tasks, c.strategies = ("rotation",), ("(D)+R",)
  c.data.target_crops.update(train=6, val=4, test=4)
  c.transfer.label_fractions = (0.5, 1.0)  # and the curve over half the training labels
  assert experiment.target_kind(c, "ours_seg") == "segmentation"
  workdir = tmp_path / "run"
  metrics = experiment.train_and_evaluate(c, workdir)
  assert set(metrics) == {"iou/random/ours_seg", "iou/rotation (D)+R/ours_seg"}
  assert all(0.0 <= v <= 1.0 for v in metrics.values())
  results = json.loads((workdir / "results.json").read_text())
  assert results["metrics"] == {"ours_seg": "iou"}
  assert "DEMO DATA" not in results["label"] and "ours_ct" in results["label"]
  md = (workdir / "results.md").read_text()
  assert "ours_seg (IOU)" in md and "paper Fig. 4 shape" in md and "| 50% | 100% |" in md
  runs = json.loads((workdir / experiment.RESULTS_FILE).read_text())
  assert results["label_fractions"] == [1.0, 0.5]
  for init in ("random", "rotation (D)+R"):
    points = results["efficiency"]["ours_seg"][init]
    assert [p[0] for p in points] == [0.5, 1.0]
    assert points[0][1] == pytest.approx(runs[f"{init}/ours_seg/50%/seed0"]["test"])
    assert points[1][1] == pytest.approx(runs[f"{init}/ours_seg/seed0"]["test"])
    assert points[1][1] == pytest.approx(metrics[f"iou/{init}/ours_seg"])
  assert (workdir / "annotation_efficiency.png").read_bytes()[:8] == PNG
  images = np.load(workdir / "targets" / "ours_seg_train_images.npy", mmap_mode="r")
  assert images.shape == (6, 16, 16, 16, 1)


def test_the_papers_targets_need_their_folders_and_your_targets_a_file(tmp_path):
  c = config_with(CONFIG, "targets", ("lcs",))
  with pytest.raises(ConfigError, match="data.dirs.lits"):
    experiment.validate(c)
  c = config_with(CONFIG, "data.user_targets", (f"ours={tmp_path / 'none.csv'}",))
  c.targets = ("ours",)
  with pytest.raises(ConfigError, match="is not a file"):
    experiment.validate(c)
  c.data.user_targets = ("ncc=/somewhere.csv",)
  with pytest.raises(ConfigError, match="is taken"):
    experiment.validate(c)
