"""AIVA end to end on its smoke config: the table and the t-SNE figure, a kill -9 during
fine-tuning resumed to the same results, the NaN stop, and one-line input errors."""

import json

import numpy as np
import pytest

from conftest import config_with, kill_after_checkpoint, run_train, shared_run

CONFIG = "configs/aiva.py:smoke"
PAIR = "site_a_clean->site_c_gamma_bright"
COLUMNS = ("source_model", "adabn", "aiva", "target_model")
PNG = b"\x89PNG\r\n\x1a\n"

aiva_run = shared_run(CONFIG, name="aiva_run", demo_data=True)


def test_smoke_writes_the_table_and_the_figure(aiva_run):
  workdir, proc = aiva_run
  final = json.loads(proc.stdout)
  for col in COLUMNS:
    assert 0.0 <= final[f"target_sdice/site_c_gamma_bright/{col}"] <= 100.0
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md and "target labels hidden" in md
  assert "| target | source model | AdaBN | AIVA | target model |" in md
  assert md.count("| site_c_gamma_bright |") == 1
  runs = json.loads((workdir / "aiva_runs.json").read_text())
  assert set(runs) == {f"{PAIR}/{col}/{seed}" for col in COLUMNS for seed in (0, 1)}
  for run in runs.values():
    assert len(run["per_volume_sdice"]) == 1  # one test volume in the smoke split
  table = json.loads((workdir / "results.json").read_text())["table"]
  cells = table["site_c_gamma_bright"]
  for col in COLUMNS:
    per_seed = [runs[f"{PAIR}/{col}/{seed}"]["sdice"] for seed in (0, 1)]
    assert cells[col][:3] == pytest.approx([np.mean(per_seed), np.std(per_seed), 2])
  assert (workdir / "aiva_tsne.png").read_bytes()[:8] == PNG
  with np.load(workdir / "embeddings" / "site_a_clean-site_c_gamma_bright_aiva_0.npz") as f:
    # 24 steps, periods of 8: clustered after the collect-only period and once more at 16
    assert int(f["period"]) == 1
    assert sorted(f["matching"]) == [0, 1, 2]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  adapt = [r for r in records if r["stage"] == f"{PAIR}/aiva/0"]
  assert len(adapt) == 16 and all({"seg", "align"} <= set(r) for r in adapt)
  assert any(r["align"] > 0 for r in adapt)
  assert not list((workdir / "checkpoints" / "runs").glob("*"))  # recorded runs drop theirs


def test_killed_during_fine_tuning_resumes_to_the_same_results(aiva_run, tmp_path, demo_cache):
  reference, _ = aiva_run
  killed = tmp_path / "killed"
  args = (f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)")
  child = run_train(killed, *args, config=CONFIG, background=True)
  step = kill_after_checkpoint(
      child, killed / "checkpoints" / "runs" / "site_a_clean-site_c_gamma_bright_aiva_0")
  assert step < 16 and not (killed / "results.md").exists()
  assert f"{PAIR}/aiva/0" not in json.loads((killed / "aiva_runs.json").read_text())
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "aiva_runs.json").read_text())
  want = json.loads((reference / "aiva_runs.json").read_text())
  assert set(got) == {f"{PAIR}/{col}/0" for col in COLUMNS}
  for key, run in got.items():
    np.testing.assert_allclose(run["per_volume_sdice"], want[key]["per_volume_sdice"],
                               rtol=1e-4, atol=1e-3, err_msg=key)


def test_a_diverging_fine_tuning_stops_with_exit_3(aiva_run, tmp_path, demo_cache):
  del aiva_run  # after it: its compiled steps are in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)",
                   "--config.finetune.learning_rate=1e38", "--config.aiva.dist_loss_lambda=1e30",
                   config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()
  # the source model's finished checkpoint is kept for the rerun
  assert list((workdir / "checkpoints" / "pretrain_site_a_clean_seed0").glob("[0-9]*"))


@pytest.mark.parametrize("override, message", [
    ("--config.data.pairs=(('site_a_clean','nowhere'),)",
     "site 'nowhere' in config.data.pairs is not in the data"),
    ("--config.aiva.k=500", "config.aiva.k=500 clusters need at least 500 distinct slices"),
    ("--config.data.source=cc359", "config.data.root must name the CC359 folder"),
])
def test_input_mistakes_end_with_one_error_line(tmp_path, demo_cache, override, message):
  proc = run_train(tmp_path / "bad", f"--config.data.cache_dir={demo_cache}", override,
                   config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("field, value, message", [
    ("aiva.k", 1, "config.aiva.k"),
    ("aiva.loss", "mmd", "config.aiva.loss"),
    ("aiva.epoch_every", 24, "must exceed config.aiva.epoch_every"),
    ("finetune.decay_steps", (5,), "config.finetune.decay_steps"),
    ("data.pairs", (("site_a_clean", "site_a_clean"),), "two different site names"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import aiva
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message):
    aiva.validate(c)
