"""The trainer end to end on the smoke config: outputs, resume after a kill, NaN stop."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
from conftest import checkpoint_steps, final_metrics as _final, run_train


def test_smoke_writes_table_plots_checkpoints(smoke_run):
  workdir, proc = smoke_run
  final = _final(workdir)
  inits = ("scratch", "transfer", "meta_aw", "meta_idw")
  targets = ("thalamus_t1w", "caudate_t2w_like", "putamen_lowres_noisy")
  for init in inits:
    for target in targets:
      assert 0.0 <= final[f"iou/{init}/{target}"] <= 100.0
  # Every reported IoU of the first shot selection, recomputed from the saved test masks
  # with a plain per-slice loop: (|P∩G| + 1e-4) / (|P∪G| + 1e-4), mean x 100.
  results = json.loads((workdir / "finetune_results.json").read_text())
  for init in inits:
    for target in targets:
      saved = np.load(workdir / "predictions" / f"{init}_{target}.npz")
      shape = tuple(saved["shape"])
      count = int(np.prod(shape))
      predicted = np.unpackbits(saved["predicted"])[:count].reshape(shape).astype(bool)
      truth = np.unpackbits(saved["truth"])[:count].reshape(shape).astype(bool)
      assert truth.any(axis=(1, 2, 3)).all()  # thresholded slices: the structure is there
      ious = []
      for p_slice, g_slice in zip(predicted, truth):
        inter = np.logical_and(p_slice, g_slice).sum()
        union = np.logical_or(p_slice, g_slice).sum()
        ious.append((inter + 1e-4) / (union + 1e-4))
      assert results[f"{init}/{target}/1"]["iou"] == pytest.approx(100 * np.mean(ious),
                                                                   abs=1e-3)
  # the reported table is the mean over the three selections
  for init in inits:
    for target in targets:
      mean = np.mean([results[f"{init}/{target}/{s}"]["iou"] for s in (1, 6, 25)])
      assert final[f"iou/{init}/{target}"] == pytest.approx(mean, abs=1e-4)
  assert json.loads(proc.stdout) == pytest.approx(final)
  table = (workdir / "results.md").read_text()
  assert "DEMO DATA" in table and "not a reproduction" in table
  assert all(f"| {i} |" in table for i in inits)
  assert len(results) == len(inits) * len(targets) * 3  # three shot-selection seeds
  for png in ["learning_curves.png"] + [f"overlay_{t}.png" for t in targets]:
    assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for stage, last in (("meta_aw", 4), ("meta_idw", 4), ("transfer", 8)):
    assert ocp.CheckpointManager(workdir / "checkpoints" / stage).latest_step() == last
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  stages = {json.loads(l)["stage"] for l in (workdir / "metrics.jsonl").read_text().splitlines()}
  assert {"transfer", "meta_aw", "meta_idw", "final"} <= stages


def test_killed_run_resumes_to_the_same_metrics(smoke_run, tmp_path, demo_cache):
  reference, _ = smoke_run
  killed = tmp_path / "killed"
  child = run_train(killed, f"--config.data.cache_dir={demo_cache}", background=True,
                    env=conftest.TWO_DEVICES)  # as smoke_run
  checkpoints = killed / "checkpoints" / "meta_aw"
  deadline = time.time() + 300
  while time.time() < deadline and child.poll() is None:
    if max(checkpoint_steps(checkpoints), default=0) >= 2:
      break
    time.sleep(0.02)
  assert child.poll() is None, "the run finished before it could be interrupted"
  child.send_signal(signal.SIGKILL)
  child.communicate()
  assert not (killed / "results.md").exists()
  interrupted_at = ocp.CheckpointManager(checkpoints).latest_step()
  assert interrupted_at is not None and interrupted_at < 4
  lines_before = len((killed / "metrics.jsonl").read_text().splitlines())

  proc = run_train(killed, f"--config.data.cache_dir={demo_cache}", env=conftest.TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
  resumed = records[lines_before:]
  # the transfer stage was complete and is not redone; meta_aw restarts after its checkpoint
  assert not [r for r in resumed if r["stage"] == "transfer"]
  assert min(r["step"] for r in resumed if r["stage"] == "meta_aw") == interrupted_at + 1
  got, want = _final(killed), _final(reference)
  assert got.keys() == want.keys()
  np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                             rtol=1e-5, atol=1e-4)

  # Running the finished command again trains nothing and prints the same metrics.
  lines_before = len(records)
  proc = run_train(killed, f"--config.data.cache_dir={demo_cache}", env=conftest.TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = (killed / "metrics.jsonl").read_text().splitlines()[lines_before:]
  assert [json.loads(l)["stage"] for l in again] == ["final"]
  assert json.loads(proc.stdout) == pytest.approx(got, rel=0, abs=0)


# Runs the real trainer with one change: from meta-batch 2 on the images hold a NaN voxel,
# as a corrupted scan would.
CORRUPTED_DATA_RUN = """
import sys
import numpy as np
from absl import app
from medda_jax import train
from medda_jax.data import tasks

clean_meta_batch = tasks.meta_batch

def corrupted_meta_batch(collection, names, index, **kwargs):
  batch = clean_meta_batch(collection, names, index, **kwargs)
  if index >= 2:
    batch["images"][0, 0, 0, 0, 0] = np.nan
  return batch

tasks.meta_batch = corrupted_meta_batch
sys.argv = ["medda_jax.train"] + sys.argv[1:]
app.run(train.main, flags_parser=train.parse_flags)
"""


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, demo_cache):
  workdir = tmp_path / "nan"
  env = dict(os.environ, **conftest._CACHE_ENV)
  proc = subprocess.run(
      [sys.executable, "-c", CORRUPTED_DATA_RUN, "--config=configs/metamedseg.py:smoke",
       f"--workdir={workdir}", f"--config.data.cache_dir={demo_cache}",
       "--config.meta.rules=('aw',)", "--config.engine.checkpoint_every=1",
       "--config.transfer.enabled=False"],
      cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  message = [l for l in proc.stderr.splitlines() if l.startswith("error: ")][-1]
  # meta-batch index 2 is the third meta-iteration
  assert "non-finite" in message and "meta-iteration 3;" in message, message
  assert "meta-iteration 2)" in message, message  # names the kept checkpoint
  manager = ocp.CheckpointManager(workdir / "checkpoints" / "meta_aw")
  assert manager.latest_step() == 2
  restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree.leaves(restored["state"]["params"])
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
  assert not (workdir / "results.md").exists()


def test_variants_name_their_paper_table_and_set_their_regime():
  from medda_jax.config_utils import load_config
  from medda_jax.methods import metamedseg
  doc = (conftest.REPO / "configs" / "metamedseg.py").read_text()
  for variant in ("paper", "full", "dawoud", "dawoud_full", "demo", "smoke"):
    c = load_config(f"configs/metamedseg.py:{variant}")
    metamedseg.validate(c)
    assert f"\n  {variant} " in doc  # the docstring names it (and its table)
    full = variant in ("full", "dawoud_full")
    assert (c.finetune.regime == "full") == full, variant
    if full:  # spec §2.6: all slices, Adam 1e-3, no scheduler, 20 epochs, one run
      assert (c.finetune.learning_rate, c.finetune.lr_decay_every, c.finetune.epochs,
              tuple(c.finetune.seeds)) == (0.001, 0, 20, (1,))
    if variant.startswith("dawoud"):
      assert tuple(c.meta.rules) == ("dawoud",) and c.meta.task_definition == "standard"


def test_full_regime_fine_tunes_on_every_training_slice(smoke_run, demo_cache, tmp_path,
                                                        monkeypatch):
  """The full-data regime on one target, from the random init: the fine-tuning gets the
  whole training split."""
  from medda_jax.config_utils import load_config
  from medda_jax.methods.metamedseg import experiment
  c = load_config("configs/metamedseg.py:smoke")
  c.data.cache_dir = str(demo_cache)  # built by the smoke run
  c.data.targets = ("thalamus_t1w",)
  c.finetune.regime = "full"
  c.finetune.seeds = (1,)
  exp = experiment.Experiment(c, tmp_path)
  seen = []
  build = exp.build_finetune

  def recording_build():
    fn = build()
    return lambda p, x, *rest: seen.append(len(x)) or fn(p, x, *rest)

  monkeypatch.setattr(exp, "build_finetune", recording_build)
  results = exp.finetune_all({"scratch": exp.init_params})
  train, _ = exp.target_split("thalamus_t1w")
  assert seen == [len(train)] and len(train) > c.finetune.shots
  assert set(results) == {"scratch/thalamus_t1w/1"}


@pytest.mark.parametrize("sampling", ["epochs", "balanced"])
def test_pretraining_batches_hold_slices_with_their_masks_and_datasets(smoke_run, demo_cache,
                                                                       tmp_path, sampling):
  """transfer.batch_size slices per step, [steps_per_call, batch] per element: every slot's
  image, mask and dataset index belong to one source slice; "epochs" covers each slice once
  per pass over the sources."""
  from medda_jax.config_utils import load_config
  from medda_jax.methods.metamedseg import experiment
  c = load_config("configs/metamedseg.py:smoke")
  c.data.cache_dir = str(demo_cache)  # built by the smoke run
  c.transfer.batch_size, c.transfer.sampling = 3, sampling
  exp = experiment.Experiment(c, tmp_path)
  spc = 2
  slices = {}  # image bytes -> (dataset, position, mask) of every source slice
  for d, name in enumerate(exp.sources):
    images, masks = exp.collection[name].batch(np.arange(len(exp.collection[name])))
    for p in range(len(images)):
      slices.setdefault(images[p].tobytes(), []).append((d, p, masks[p]))
  n = len(exp.source_slices)
  elements = list(exp.pretrain_batches(total=n // 3 - (n // 3) % spc, spc=spc))
  seen = []
  for element in elements:
    assert element["images"].shape[:2] == element["dataset"].shape == (spc, 3)
    for i, j in np.ndindex(spc, 3):
      # images shared by datasets (the same brain slice) are told apart by the index
      (d, p, mask), = [s for s in slices[element["images"][i, j].tobytes()]
                       if s[0] == element["dataset"][i, j]]
      np.testing.assert_array_equal(element["masks"][i, j], mask)
      seen.append((d, p))
  assert len(seen) == len(elements) * spc * 3 >= n - 3 * spc
  if sampling == "epochs":
    assert len(set(seen)) == len(seen)  # no slice twice within the first pass
