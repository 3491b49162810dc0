"""Stain-AgLr end to end on its smoke config: the ablation table and the regeneration
figure, a kill -9 mid-run resumed to the same results, the NaN stop, and one-line input
errors (a labels CSV without the label column, a row naming a missing file, a lab without
patches)."""

import json

import numpy as np
import pytest

from conftest import config_with, error_message, kill_after_checkpoint, run_train, shared_run

CONFIG = "configs/stain_aglr.py:smoke"
VARIANTS = ("vanilla", "hed_light", "hed_reg", "hed_cons", "stain_aglr")
LABS = ("lab_hed_dark", "lab_hed_pale", "lab_hsv")
PNG = b"\x89PNG\r\n\x1a\n"

stain_aglr_run = shared_run(CONFIG, name="stain_aglr_run", demo_data=True)


def test_smoke_writes_the_ablation_table_and_the_figure(stain_aglr_run):
  workdir, proc = stain_aglr_run
  final = json.loads(proc.stdout)
  assert set(final) == {f"auc/{v}/{lab}" for v in VARIANTS for lab in LABS + ("mean",)}
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md and "synthetic labs" in md
  assert "| method | lab_hed_dark | lab_hed_pale | lab_hsv | mean |" in md
  for title in ("| Vanilla |", "| HED-light aug |", "| + L_Reg |", "| + L_Cons |",
                "| Stain-AgLr |"):
    assert md.count(title) == 1
  runs = json.loads((workdir / "stain_aglr_runs.json").read_text())
  assert set(runs) == {f"{v}/{s}" for v in VARIANTS for s in (0, 1)}
  table = json.loads((workdir / "results.json").read_text())["table"]
  for v in VARIANTS:
    for lab in LABS:
      per_seed = [runs[f"{v}/{s}"]["auc"][lab] for s in (0, 1)]
      assert 0.0 <= per_seed[0] <= 1.0
      assert table[v][lab] == pytest.approx([np.mean(per_seed), np.std(per_seed), 2])
    means = [np.mean([runs[f"{v}/{s}"]["auc"][lab] for lab in LABS]) for s in (0, 1)]
    assert table[v]["mean"][:2] == pytest.approx([np.mean(means), np.std(means)])
  assert (workdir / "stain_aglr_regeneration.png").read_bytes()[:8] == PNG
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r["stage"] == "stain_aglr/0/epoch"]
  assert [r["step"] for r in epochs] == [1, 2] and all(r["lr"] > 0 for r in epochs)
  steps = [r for r in records if r["stage"] == "stain_aglr/0"]
  assert steps and all({"ce", "reg", "cons"} <= set(r) for r in steps)
  vanilla = [r for r in records if r["stage"] == "vanilla/0"]
  assert all(r["loss"] == pytest.approx(r["ce"], rel=1e-5) for r in vanilla)  # no extra terms
  assert not list((workdir / "checkpoints").glob("*/[0-9]*"))  # recorded runs drop theirs


def test_killed_mid_run_resumes_to_the_same_results(stain_aglr_run, tmp_path, demo_cache):
  reference, _ = stain_aglr_run
  killed = tmp_path / "killed"
  args = (f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)",
          "--config.variants=('stain_aglr',)", "--config.engine.checkpoint_every=1")
  child = run_train(killed, *args, config=CONFIG, background=True)
  step = kill_after_checkpoint(child, killed / "checkpoints" / "stain_aglr_0")
  assert step < 16 and not (killed / "results.md").exists()  # killed after epoch 1 of 2
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "stain_aglr_runs.json").read_text())["stain_aglr/0"]
  want = json.loads((reference / "stain_aglr_runs.json").read_text())["stain_aglr/0"]
  assert got["epochs"] == want["epochs"] and got["final_lr"] == pytest.approx(want["final_lr"])
  for lab in LABS:
    assert got["auc"][lab] == pytest.approx(want["auc"][lab], abs=1e-6), lab
  assert got["best_val_loss"] == pytest.approx(want["best_val_loss"], rel=1e-5)


def test_a_diverging_run_stops_with_exit_3(stain_aglr_run, tmp_path, demo_cache):
  del stain_aglr_run  # after it: its compiled steps are in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)",
                   "--config.variants=('stain_aglr',)", "--config.train.learning_rate=1e38",
                   "--config.loss.lambda_cons=1e38", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()


def user_data(root, header="path,label", missing=False):
  from PIL import Image
  rows = [header]
  for lab in ("lab_a", "lab_b"):
    (root / lab).mkdir(parents=True)
    for i in range(4):
      Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(root / lab / f"{i}.png")
      rows.append(f"{lab}/{i}.png,{i % 2}")
  if missing:
    rows.append("lab_b/gone.png,1")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  return f"--config.data.user=('mine={root}',)"


@pytest.mark.parametrize("case, message", [
    ("no_label_column", "lacks column(s) ['label']"),
    ("missing_file", "names"),
    ("empty_lab", "lab 'lab_c' has no patches"),
])
def test_input_mistakes_end_with_one_error_line(tmp_path, case, message):
  user = user_data(tmp_path / "data", header="path,class" if case == "no_label_column"
                   else "path,label", missing=case == "missing_file")
  train_lab = "lab_c" if case == "empty_lab" else "lab_a"
  proc = run_train(tmp_path / "bad", "--config.data.source=none", user,
                   f"--config.data.train_lab={train_lab}", config=CONFIG, timeout=300)
  first = error_message(proc).splitlines()[0]
  assert message in first
  if case == "missing_file":
    assert "gone.png, which does not exist" in first


@pytest.mark.parametrize("field, value, message", [
    ("data.source", "camelyon", "config.data.source"),
    ("data.patch", 48, "divisible by 32"),
    ("variants", ("vanilla", "fancy"), "config.variants entry 'fancy'"),
    ("model.decoder", (4, 4), "config.model.decoder has 2 stages"),
    ("data.test_labs", ("lab_source",), "must not hold the training lab"),
    ("train.factor", 1.5, "config.train.factor"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import stain_aglr
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    stain_aglr.validate(c)
