"""CycleGAN UDA end to end on its smoke config: the seed's table over seeds, the grids, a
kill during CycleGAN training resumed to the same table, the NaN stop, and bad inputs."""

import json

import numpy as np
import pytest

from conftest import TWO_DEVICES, checkpoint_steps, config_with, kill_after_checkpoint, run_train
from medda_jax.config_utils import load_config

CONFIG = "configs/cyclegan.py:smoke"


# cyclegan_run: tests/conftest.py


def test_smoke_writes_the_seed_table_over_seeds_and_grids(cyclegan_run):
  workdir, proc = cyclegan_run
  final = json.loads(proc.stdout)
  c = load_config(CONFIG)
  a, b = c.data.domains
  results = json.loads((workdir / "results.json").read_text())
  runs = results["runs"]
  assert len(runs) == 2 * len(c.classifiers) * 2 * len(c.seeds)
  rows = results["summary"]
  assert [(r["train"], r["test"]) for r in rows] == [(a, b), (a, a), (b, a), (b, b)]
  for row in rows:
    for clf in c.classifiers:
      for variant in ("baseline", "uda"):
        values = [r["test"][row["test"]]["auroc"] for r in runs.values()
                  if (r["source"], r["classifier"], r["variant"]) == (row["train"], clf, variant)]
        assert len(values) == len(c.seeds)
        cell = row["cells"][clf][variant]
        assert cell["mean"] == pytest.approx(np.mean(values))
        assert cell["ci95"] == pytest.approx(1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))
        assert final[f"auroc/{row['train']}->{row['test']}/{clf}/{variant}"] == pytest.approx(
            cell["mean"])
  for r in runs.values():
    assert r["train_images"] == (2 if r["variant"] == "uda" else 1) * runs[
        f"{r['source']}->{r['target']}/{r['classifier']}/baseline/seed{r['seed']}"]["train_images"]
    for v in r["test"].values():
      lo, hi = v["ci_percentile"]
      assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= v["auroc"] <= 1.0
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not mammography" in md and "Seed Table 1" in md
  for s, t in ((a, b), (b, a)):
    assert (workdir / f"translations_{s}_to_{t}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  gan_rows = [r for r in records if r["stage"].startswith("CycleGAN")]
  assert gan_rows and {"g_gan_a", "g_cycle_a", "g_idt_b", "d_d_a", "d_d_b"} <= set(gan_rows[0])
  assert checkpoint_steps(workdir / "checkpoints" / "cyclegan")


def test_killed_during_cyclegan_training_resumes_to_the_same_table(cyclegan_run, tmp_path):
  # The first seed only: the CycleGAN is trained with it, and its classifier runs do not
  # depend on the other seed's.
  reference, _ = cyclegan_run
  killed = tmp_path / "killed"
  first_seed = "--config.seeds=(0,)"
  child = run_train(killed, first_seed, config=CONFIG, background=True, env=TWO_DEVICES)
  step = kill_after_checkpoint(child, killed / "checkpoints" / "cyclegan")
  assert not (killed / "results.md").exists() and not (killed / "runs.json").exists(), step
  proc = run_train(killed, first_seed, config=CONFIG, env=TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "results.json").read_text())
  want = json.loads((reference / "results.json").read_text())
  assert got["runs"].keys() == {k for k in want["runs"] if k.endswith("/seed0")}
  for key, run in got["runs"].items():
    for test, v in run["test"].items():
      assert v["auroc"] == pytest.approx(want["runs"][key]["test"][test]["auroc"], abs=1e-6), key


def test_a_diverging_cyclegan_stops_with_exit_3(tmp_path):
  proc = run_train(tmp_path / "nan", "--config.cyclegan.learning_rate=1e38", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "nan" / "results.md").exists()


@pytest.mark.parametrize("field, value, message", [
    ("data.domains", ("mnist",), "exactly two domains"),
    ("data.domains", ("mnist", "ffdm="), "domain 'ffdm' needs its data"),
    ("data.domains", ("mnist", "svhn"), "unknown domain 'svhn'"),
    ("data.domains", ("cbis_ddsm", "mnist"), "config.data.dirs.cbis_ddsm must name"),
    ("cyclegan.crop_size", 18, "must be a multiple of 4"),
    ("cyclegan.load_size", 12, "config.cyclegan.load_size=12 is out of range"),
    ("cyclegan.n_layers", 3, "too small for a PatchGAN"),
    ("classifier.size", 32, "AlexNet needs at least 63 px"),
    ("classifiers", ("vgg",), "config.classifiers"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import cyclegan_uda
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    cyclegan_uda.validate(c)


def test_bad_inputs_end_with_one_error_line(tmp_path):
  root = tmp_path / "site"
  (root / "benign").mkdir(parents=True)
  (root / "malignant").mkdir()
  (root / "benign" / "notes.txt").write_text("not an image")
  for override, message in [
      (f"--config.data.domains=('mnist','ours={root}')", "holds no image"),
      ("--config.cyclegan.crop_size=18", "must be a multiple of 4")]:
    proc = run_train(tmp_path / "bad", override, config=CONFIG, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last
