"""The CateNorm experiment end to end on its smoke config: the table and the figure,
resumption after a kill -9, the NaN stop, and one-line errors for bad inputs."""

import json

import nibabel as nib
import numpy as np

from conftest import kill_after_checkpoint, run_train, shared_run

CONFIG = "configs/catenorm.py:smoke"

catenorm_run = shared_run(CONFIG, name="catenorm_run", demo_data=True)


def test_smoke_writes_the_table_and_the_figure(catenorm_run):
  workdir, proc = catenorm_run
  final = json.loads(proc.stdout)
  for selection in ("last", "val"):
    for row in ("BN", "BN continued (equal iterations)", "CateNorm block 1",
                "CateNorm block 1 (BN pass)"):
      assert 0.0 <= final[f"dice/{selection}/{row}"] <= 100.0
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md
  assert "## last model" in md and "## val-selected model" in md
  assert md.count("| CateNorm block 1 (BN pass) |") == 3  # both tables and the class table
  results = json.loads((workdir / "results.json").read_text())
  cell = results["tables"]["last"]["BN"]["all_t1w"]
  assert len(cell) == 2 and cell[1] >= 0.0  # mean, std over the 2 seeds
  runs = json.loads((workdir / "runs.json").read_text())
  assert sorted(runs) == sorted(f"all_t1w/{m}/seed{s}"
                                for m in ("bn", "bn_continued", "catenorm_block1") for s in (0, 1))
  classes = runs["all_t1w/catenorm_block1/seed0"]["sites"]["all_t1w"]["last"]["final"]["dice"]
  assert set(classes) == {"cortex", "deep grey", "cerebellum", "mean"}
  assert (workdir / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("loss_cn" in r for r in records if "catenorm" in r["stage"])
  # only the BN runs keep their checkpoints (CateNorm's stage 1)
  kept = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert kept == ["all_t1w_bn_seed0", "all_t1w_bn_seed1"]


def test_killed_run_resumes_to_the_same_results(catenorm_run, tmp_path, demo_cache):
  reference, _ = catenorm_run
  killed = tmp_path / "killed"
  args = (f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)")  # the first seed
  child = run_train(killed, *args, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "checkpoints" / "all_t1w_bn_seed0")
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "runs.json").read_text())
  want = json.loads((reference / "runs.json").read_text())
  assert sorted(got) == ["all_t1w/bn/seed0", "all_t1w/bn_continued/seed0",
                         "all_t1w/catenorm_block1/seed0"]
  for key in got:
    for selection in ("last", "val"):
      for output in ("final", "bn_pass"):
        a = got[key]["sites"]["all_t1w"][selection][output]["dice"]
        b = want[key]["sites"]["all_t1w"][selection][output]["dice"]
        np.testing.assert_allclose([a[k] for k in sorted(b)], [b[k] for k in sorted(b)],
                                   atol=1e-6, err_msg=f"{key} {selection} {output}")
    np.testing.assert_allclose(got[key]["final_loss"], want[key]["final_loss"], rtol=1e-5)


def test_a_diverging_run_stops_with_exit_3(catenorm_run, tmp_path, demo_cache):
  del catenorm_run  # after it: its compiled step is in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}",
                   "--config.train.learning_rate=1e38", "--config.methods=('bn',)",
                   config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()


def write(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def test_bad_inputs_end_with_one_error_line(tmp_path):
  prostate = tmp_path / "prostate" / "RUNMC"
  write(prostate / "Case00.nii.gz", np.zeros((16, 16, 4), np.float32))
  write(prostate / "Case00_segmentation.nii.gz", np.zeros((16, 16, 4), np.uint8))
  btcv = tmp_path / "btcv"
  write(btcv / "img" / "img0001.nii.gz", np.zeros((16, 16, 4), np.float32))
  write(btcv / "label" / "label0001.nii.gz", np.zeros((16, 16, 3), np.uint8))
  for overrides, message in [
      (("--config.data.source=prostate", f"--config.data.root={prostate.parent}",
        "--config.data.sites=('RUNMC',)", "--config.data.split_file=all_list.txt"),
       "has no split file all_list.txt"),
      (("--config.data.source=btcv", f"--config.data.root={btcv}"),
       "has shape (16, 16, 4) but label"),
      (("--config.methods=('bn','layernorm')",), "unknown entries ['layernorm']"),
  ]:
    proc = run_train(tmp_path / "bad", *overrides, config=CONFIG, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last
