"""ODEx end to end on its smoke config: the table, the Dice matrices and the pool figure; a
kill -9 mid-stream resumed to the same table (pool included); the NaN stop; one-line input
errors."""

import json
import signal
import time

import numpy as np
import pytest

from conftest import run_train, shared_run

CONFIG = "configs/odex.py:smoke"
METHODS = ("odex", "sequential", "ewc", "lwf", "joint")
PNG = b"\x89PNG\r\n\x1a\n"

odex_run = shared_run(CONFIG, name="odex_run")


def test_smoke_writes_the_table_matrices_and_the_pool_figure(odex_run):
  workdir, proc = odex_run
  final = json.loads(proc.stdout)
  runs = json.loads((workdir / "odex_runs.json").read_text())
  assert set(runs) == {f"{m}/{s}" for m in METHODS for s in (0, 1)}
  for m in METHODS:
    dice = [np.mean(runs[f"{m}/{s}"]["final"]) for s in (0, 1)]
    assert final[f"{m}/dice"] == pytest.approx(np.mean(dice))
  for m in METHODS[:-1]:
    for s in (0, 1):
      r = np.array(runs[f"{m}/{s}"]["matrix"])
      assert r.shape == (3, 3) and np.all((0 <= r) & (r <= 1))
      assert runs[f"{m}/{s}"]["bwt"] == pytest.approx(np.mean([r[2, 0] - r[0, 0],
                                                               r[2, 1] - r[1, 1]]))
      assert runs[f"{m}/{s}"]["fwt"] == pytest.approx(np.mean([r[1, 1] - r[0, 1],
                                                               r[2, 2] - r[0, 2]]))
  # every method starts from the same initialisation and first-stage batches
  for s in (0, 1):
    first = [runs[f"{m}/{s}"]["matrix"][0] for m in METHODS[:-1]]
    np.testing.assert_allclose(first, [first[0]] * 4, atol=1e-6)
  for s in (0, 1):
    odex = runs[f"odex/{s}"]
    assert odex["pool_size"] == 1 + sum(odex["expanded"])
    assert odex["trained"][0] == 0 and len(odex["trained"]) == 3
    for counts in odex["routing"][-1]:  # every test image goes to exactly one model
      assert sum(counts) == 2 and len(counts) == odex["pool_size"]
    scores = [json.loads(x) for x in odex["scores"][1:]]
    assert all(len(x["raw"]) >= 1 and "threshold" in x for x in scores)
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md
  assert "| method | Dice | BWT | FWT | models |" in md
  assert md.count("Dice matrix R") == 4
  assert (workdir / "odex_pool.png").read_bytes()[:8] == PNG
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  records = [r for r in records if "loss" in r]  # training records, not the Dice rows
  ewc = [r for r in records if r["stage"] == "ewc_seed0/stage2"]
  lwf = [r for r in records if r["stage"] == "lwf_seed0/stage2"]
  seq = [r for r in records if r["stage"] == "sequential_seed0/stage2"]
  assert ewc and all(r["lwf"] == 0 for r in ewc) and any(r["ewc"] > 0 for r in ewc)
  assert lwf and all(r["ewc"] == 0 for r in lwf) and all(r["lwf"] > 0 for r in lwf)
  assert seq and all(r["ewc"] == 0 and r["lwf"] == 0 for r in seq)


def test_killed_mid_stream_resumes_to_the_same_table(odex_run, tmp_path):
  reference, _ = odex_run
  killed = tmp_path / "killed"
  # checkpoints inside every stage (not in the reference run): they change no result
  args = ("--config.seeds=(0,)", "--config.methods=('odex',)",
          "--config.engine.checkpoint_every=1")
  child = run_train(killed, *args, config=CONFIG, background=True)
  pool = killed / "pools" / "odex_seed0.msgpack"
  deadline = time.time() + 300
  while child.poll() is None and not pool.exists() and time.time() < deadline:
    time.sleep(0.02)
  time.sleep(0.3)  # into the next stage: its checkpoints or the pool file are resumed from
  assert child.poll() is None, "the run finished before it could be interrupted"
  child.send_signal(signal.SIGKILL)
  child.communicate()
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "odex_runs.json").read_text())["odex/0"]
  want = json.loads((reference / "odex_runs.json").read_text())["odex/0"]
  np.testing.assert_allclose(got["matrix"], want["matrix"], atol=1e-6)
  assert got["pool_size"] == want["pool_size"]
  assert (got["trained"], got["expanded"], got["routing"]) == (
      want["trained"], want["expanded"], want["routing"])


def test_a_diverging_run_stops_with_exit_3(odex_run, tmp_path):
  del odex_run  # after it: its compiled steps are in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, "--config.seeds=(0,)", "--config.methods=('sequential',)",
                   "--config.data.stages=2",
                   "--config.train.learning_rate=1e38", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()


def _manifest(tmp_path, rows):
  path = tmp_path / "stage.csv"
  path.write_text("image,label\n" + "".join(f"{a},{b}\n" for a, b in rows))
  return path


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("threshold", "config.odex.threshold='high' is not a number"),
    ("shapes", "differ"),
])
def test_input_mistakes_end_with_one_error_line(tmp_path, case, message):
  import nibabel as nib
  img = tmp_path / "img.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), str(img))
  lab = tmp_path / "lab.nii.gz"
  nib.save(nib.Nifti1Image(np.zeros((6, 6, 5), np.uint8), np.eye(4)), str(lab))
  if case == "missing":
    args = [f"--config.data.user=('a={_manifest(tmp_path, [('img.nii.gz', 'gone.nii.gz')])}',)"]
  elif case == "shapes":
    args = [f"--config.data.user=('a={_manifest(tmp_path, [('img.nii.gz', 'lab.nii.gz')])}',)"]
  else:
    args = ["--config.odex.threshold=high"]
  proc = run_train(tmp_path / "bad", *args, config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert message in proc.stderr.strip().splitlines()[-1]
