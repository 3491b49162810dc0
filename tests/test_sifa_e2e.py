"""SIFA and SIFA + SynthMix end to end on the smoke config: both methods' tables from the
runs, the t-test, the figures, a kill during training resumed to the same table, the NaN
stop, and bad inputs."""

import json

import numpy as np
import pytest

from conftest import TWO_DEVICES, config_with, kill_after_checkpoint, run_train
from medda_jax.config_utils import load_config

CONFIG = "configs/synthmix.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"


# sifa_run: tests/conftest.py


def test_smoke_writes_both_methods_tables_and_figures(sifa_run):
  workdir, proc = sifa_run
  final = json.loads(proc.stdout)
  c = load_config(CONFIG)
  results = json.loads((workdir / "results.json").read_text())
  runs, summary = results["runs"], results["summary"]
  assert len(runs) == len(c.methods) * len(c.seeds)
  assert [r["method"] for r in summary["rows"]] == list(c.methods)
  for row in summary["rows"]:
    classes = row["classes"]
    assert len(classes) == 4
    chosen = [r for r in runs.values() if r["method"] == row["method"]]
    volumes = list(chosen[0]["volumes"])
    assert row["volumes"] == len(volumes) == c.data.digits.test_images // c.data.digits.mosaic ** 2
    for cls in classes:
      # A volume's score is the mean over the seeds where it is defined (Dice is undefined
      # with the class in neither ground truth nor prediction); the cell is over the
      # volumes where that is defined.
      per_volume = []
      for v in volumes:
        defined = [r["volumes"][v][cls]["dice"] for r in chosen
                   if not np.isnan(r["volumes"][v][cls]["dice"])]
        if defined:
          per_volume.append(np.mean(defined))
      assert row["cells"][cls]["dice"]["mean"] == pytest.approx(np.mean(per_volume))
      assert row["cells"][cls]["dice"]["std"] == pytest.approx(np.std(per_volume))
      assert row["cells"][cls]["dice"]["undefined"] == len(volumes) - len(per_volume)
      for r in chosen:
        for v in volumes:
          dice = r["volumes"][v][cls]["dice"]
          assert np.isnan(dice) or 0.0 <= dice <= 1.0
    assert row["mean"]["dice"] == pytest.approx(
        np.mean([row["cells"][k]["dice"]["mean"] for k in classes]))
    assert final[f"dice/mnist->mnist_m/{row['method']}"] == pytest.approx(row["mean"]["dice"])
  test = summary["tests"][0]
  assert test["direction"] == "mnist->mnist_m" and {"t", "p"} <= set(test["dice"])
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not cardiac data" in md and "Seed Tables 1-2" in md
  assert "SynthMix vs SIFA" in md
  for name in ("segmentation_mnist_to_mnist_m.png", "translations_mnist_to_mnist_m_sifa.png",
               "translations_mnist_to_mnist_m_synthmix.png"):
    assert (workdir / name).read_bytes()[:8] == PNG, name
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  by_stage = {r["stage"]: r for r in records}
  sifa = by_stage["mnist->mnist_m/sifa/seed0"]
  mix = by_stage["mnist->mnist_m/synthmix/seed0"]
  base_keys = {"g_cycle", "g_gan_t", "d_d_t", "seg_ce", "seg_dice", "seg_adv_p", "u_gan_s",
               "d_s_main", "d_s_aux", "d_p_loss_d_p", "d_p_ll_loss_d_p_ll"}
  assert base_keys <= set(sifa) and base_keys <= set(mix)
  assert "g_mix_s" not in sifa and "inspector_l_i" not in sifa and "u_mix_t" not in sifa
  assert {"g_mix_s", "u_mix_t", "inspector_l_i"} <= set(mix)
  assert not list((workdir / "checkpoints").glob("*/*"))  # recorded runs drop theirs


def test_killed_during_training_resumes_to_the_same_table(sifa_run, tmp_path):
  reference, _ = sifa_run
  killed = tmp_path / "killed"
  one_run = ("--config.methods=('sifa',)", "--config.seeds=(0,)")  # the reference's first
  child = run_train(killed, *one_run, config=CONFIG, background=True, env=TWO_DEVICES)
  step = kill_after_checkpoint(child, killed / "checkpoints" / "mnist->mnist_m_sifa_seed0")
  assert not (killed / "results.md").exists() and not (killed / "runs.json").exists(), step
  proc = run_train(killed, *one_run, config=CONFIG, env=TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "results.json").read_text())["runs"]
  want = json.loads((reference / "results.json").read_text())["runs"]
  assert list(got) == ["mnist->mnist_m/sifa/seed0"]
  for key, run in want.items():
    if key not in got:
      continue
    for vol, classes in run["volumes"].items():
      for cls, v in classes.items():
        for metric in ("dice", "assd"):
          np.testing.assert_allclose(got[key]["volumes"][vol][cls][metric], v[metric],
                                     atol=1e-6, err_msg=f"{key} {vol} {cls} {metric}")


def test_a_diverging_run_stops_with_exit_3(sifa_run, tmp_path):
  del sifa_run  # after it, on its worker: its compiled iteration is in the cache
  proc = run_train(tmp_path / "nan", "--config.sifa.learning_rate=1e38",
                   "--config.sifa.seg_learning_rate=1e38", "--config.methods=('sifa',)",
                   config=CONFIG, env=TWO_DEVICES)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "nan" / "results.md").exists()


@pytest.mark.parametrize("field, value, message", [
    ("data.directions", ("mnist",), "'source->target'"),
    ("data.directions", ("mnist->mnist",), "adapts a domain to itself"),
    ("data.directions", ("mnist->svhn",), "unknown domain 'svhn'"),
    ("data.directions", ("mr->ct",), "config.data.dirs.mmwhs must name"),
    ("data.image_size", 36, "multiple of 8"),
    ("data.image_size", 48, "needs a power of two"),
    ("synthmix.mask_k", 6, "power of two"),
    ("methods", ("sifa", "cutmix"), "config.methods"),
    ("seeds", (), "config.seeds"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import sifa
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    sifa.validate(c)


def test_bad_inputs_end_with_one_error_line(tmp_path):
  empty = tmp_path / "mmwhs"
  empty.mkdir()
  for overrides, message in [
      ((f"--config.data.dirs.mmwhs={empty}", "--config.data.directions=('mr->ct',)"),
       "mr_train"),
      (("--config.data.image_size=36",), "multiple of 8")]:
    proc = run_train(tmp_path / "bad", *overrides, config=CONFIG, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last
