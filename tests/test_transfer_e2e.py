"""The gradient-transfer experiment end to end on its smoke config: both tables, the
figure, resumption after a kill, and config errors."""

import json

import jax
import numpy as np
import pytest

from conftest import TWO_DEVICES, config_with, kill_after_results, run_train
from medda_jax.config_utils import load_config
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.supervised import TrainState
from medda_jax.methods import gradient_transfer as gt

CONFIG = "configs/transfer.py:smoke"
METHODS = ("fta", "ftf", "l2sp", "spottune", "octl", "mmtl")
# transfer_run: tests/conftest.py


def test_smoke_writes_both_tables_and_the_figure(transfer_run):
  workdir, proc = transfer_run
  final = json.loads(proc.stdout)
  for opt in ("sgd", "adam"):
    for budget in ("small", "large"):
      for col in ("none",) + METHODS:
        for side in ("target", "source"):
          assert 0.0 <= final[f"{side}_sdice/{opt}/{budget}/{col}"] <= 100.0
  md = (workdir / "results.md").read_text()
  assert "Target-site test surface Dice" in md and "Source retention" in md
  assert "DEMO DATA" in md and "not a reproduction" in md
  assert md.count("| adam | small |") == 2 and md.count("| sgd | large |") == 2
  results = json.loads((workdir / "transfer_results.json").read_text())
  # 2 optimizers x 2 seeds x (2 budgets x 6 methods + the unadapted source model)
  assert len(results) == 2 * 2 * (2 * 6 + 1)
  small = [v for k, v in results.items() if "/small/" in k]
  large = [v for k, v in results.items() if "/large/" in k]
  # small = every 2nd slice of one subject, large = every slice of two
  assert max(r["target_slices"] for r in small) < min(r["target_slices"] for r in large)
  table = json.loads((workdir / "results.json").read_text())
  assert set(table["table"]) == {"sgd", "adam"}
  assert (workdir / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any(r["stage"].startswith("pretrain_adam") for r in records)
  assert any("/spottune/" in r["stage"] and "tuned_blocks" in r for r in records)


def test_reported_dice_of_the_source_model_recomputed_by_hand(transfer_run, demo_cache,
                                                               tmp_path):
  # The 'none' column's model is the saved pre-training checkpoint: predict the target's
  # test subjects with the bare network and score them with a plain numpy Dice.
  workdir, _ = transfer_run
  c = load_config(CONFIG)
  c.data.cache_dir = str(demo_cache)
  exp = gt.Experiment(c, tmp_path)
  src, tgt = c.data.pairs[0]
  init = exp.init_variables(0)
  like = TrainState.create(init["params"], exp.optimizer("adam", "pretrain"),
                           init["batch_stats"], jax.random.PRNGKey(0))
  ckpt = Checkpointer(workdir / "checkpoints" / f"pretrain_adam_{src}_seed0")
  try:
    source, _ = ckpt.restore(like)
  finally:
    ckpt.close()
  apply = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
  dices = []
  for vol in exp.splits[tgt].test:
    assert vol.image.shape[1] % 8 == 0 and vol.image.shape[2] % 8 == 0  # no padding
    logits = np.asarray(apply({"params": source.params, "batch_stats": source.model_state},
                              vol.image[..., None].astype(np.float32)))[..., 0]
    pred, truth = logits > 0, vol.mask > 0
    dices.append(2.0 * np.sum(pred & truth) / (np.sum(pred) + np.sum(truth)))
  exp.writer.close()
  results = json.loads((workdir / "transfer_results.json").read_text())
  reported = results[f"adam/{src}->{tgt}/source_model/0"]["target"]["dice"]
  assert reported == pytest.approx(100 * np.mean(dices), abs=1e-3)


def test_killed_run_resumes_to_the_same_results(transfer_run, tmp_path, demo_cache):
  # One seed and optimizer of the smoke config (their 13 runs, every method and budget, are
  # independent of the other seed's and optimizer's), killed mid-way and rerun: every run's
  # scores equal the uninterrupted reference's.
  reference, _ = transfer_run
  killed = tmp_path / "killed"
  args = (f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)",
          "--config.optimizers=('adam',)")
  child = run_train(killed, *args, config=CONFIG, background=True, env=TWO_DEVICES)
  results = killed / "transfer_results.json"
  kill_after_results(child, results, 5)
  assert not (killed / "results.md").exists()
  done_before = set(json.loads(results.read_text()))
  assert 0 < len(done_before) < 13

  proc = run_train(killed, *args, config=CONFIG, env=TWO_DEVICES)  # as transfer_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (killed / "results.md").exists()
  got = json.loads(results.read_text())
  want = {k: v for k, v in json.loads((reference / "transfer_results.json").read_text()).items()
          if k.startswith("adam/") and k.endswith("/0")}
  assert got.keys() == want.keys() and len(got) == 13
  scores = lambda r: [r[k][side][m] for k in sorted(r)  # noqa: E731
                      for side in ("target", "source") for m in ("sdice", "dice")]
  np.testing.assert_allclose(scores(got), scores(want), rtol=1e-4, atol=1e-3)


# Config mistakes caught by gradient_transfer.validate (run by the trainer before anything
# else); the site and budget checks need the data, so they go through the command line.
@pytest.mark.parametrize("field, value, message", [
    ("methods", ("fta", "mmtx"), "config.methods has unknown entries ['mmtx']"),
    ("data.source", "cc359", "config.data.root must name the CC359 folder"),
    ("data.crop", 20, "must be divisible by 8"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  with pytest.raises(ConfigError) as e:
    gt.validate(config_with(CONFIG, field, value))
  assert message in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("--config.methods=('fta','mmtx')", "config.methods has unknown entries ['mmtx']"),
    ("--config.data.pairs=(('site_a_clean','nowhere'),)", "site 'nowhere' in config.data.pairs"),
    ("--config.budgets=(('huge',9,1),)", "asks for 9 target subjects"),
])
def test_config_mistakes_end_with_one_error_line(tmp_path, demo_cache, override, message):
  proc = run_train(tmp_path / "bad", f"--config.data.cache_dir={demo_cache}", override,
                   config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr.strip().splitlines()[-1]


def test_tfds_layout_without_prepared_dataset_names_the_build_command(tmp_path):
  (tmp_path / "tfds").mkdir()
  proc = run_train(tmp_path / "bad", "--config.data.source=cc359", "--config.data.layout=tfds",
                   f"--config.data.root={tmp_path / 'tfds'}", config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "holds no prepared dataset" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].strip().startswith(
      "python -m medda_jax.data.builders.build cc359 --manual_dir=")
