"""Several JAX processes on localhost through launch/local.sh: the MetaMedSeg smoke run on
2 processes equals 1 process, a killed 2-process run resumes, and the launcher fails fast."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
from conftest import checkpoint_steps, final_metrics, run_train

LOCAL = str(conftest.REPO / "launch" / "local.sh")


def _launch(num_processes, *command, env=None, timeout=600, background=False, log_dir=None):
  full_env = dict(os.environ, **conftest._CACHE_ENV, **(env or {}))
  if log_dir is not None:
    full_env["MEDDA_LOG_DIR"] = str(log_dir)
  cmd = ["bash", LOCAL, str(num_processes), "--", *command]
  if background:  # own session: the test can kill every process of the run at once
    return subprocess.Popen(cmd, cwd=conftest.REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
  return subprocess.run(cmd, cwd=conftest.REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def _train_command(workdir, demo_cache):
  return [sys.executable, "-m", "medda_jax.train", "--config=configs/metamedseg.py:smoke",
          f"--workdir={workdir}", f"--config.data.cache_dir={demo_cache}"]


def _values(final):
  return np.array([final[k] for k in sorted(final)])


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, demo_cache):
  """The MetaMedSeg smoke run on two processes, killed (every process at once) after its
  second meta-training checkpoint and started again with the same command. Returns
  (workdir, proc of the second start, step interrupted at, metrics lines before it)."""
  workdir = tmp_path_factory.mktemp("two_processes")
  child = _launch(2, *_train_command(workdir, demo_cache), background=True,
                  log_dir=workdir / "killed_logs")
  deadline = time.time() + 400
  while time.time() < deadline and child.poll() is None:
    if max(checkpoint_steps(workdir / "checkpoints" / "meta_aw"), default=0) >= 2:
      break
    time.sleep(0.02)
  assert child.poll() is None, "the run finished before it could be interrupted"
  os.killpg(child.pid, signal.SIGKILL)  # the launcher and both trainer processes
  child.communicate()
  assert not (workdir / "results.md").exists()
  interrupted_at = ocp.CheckpointManager(workdir / "checkpoints" / "meta_aw").latest_step()
  lines_before = len((workdir / "metrics.jsonl").read_text().splitlines())
  proc = _launch(2, *_train_command(workdir, demo_cache), log_dir=workdir / "logs")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc, interrupted_at, lines_before


def test_two_processes_equal_one_process(two_process_run, smoke_run):
  workdir, proc, _, _ = two_process_run
  assert "devices: 2 x cpu (cpu) on 2 process(es)" in proc.stderr
  # The same devices in one process (smoke_run: two simulated CPU devices, one task each).
  # Same numbers, though the two-process run was killed and resumed on the way.
  one_process = smoke_run[0]
  two, reference = final_metrics(workdir), final_metrics(one_process)
  assert two.keys() == reference.keys()
  np.testing.assert_allclose(_values(two), _values(reference), rtol=1e-6, atol=1e-6)
  runs = json.loads((workdir / "finetune_results.json").read_text())
  reference_runs = json.loads((one_process / "finetune_results.json").read_text())
  assert runs.keys() == reference_runs.keys()  # every run, fine-tuned on either process
  for key, run in runs.items():
    assert run == pytest.approx(reference_runs[key], rel=1e-6, abs=1e-6), key


def test_only_process_zero_writes(two_process_run):
  workdir = two_process_run[0]
  records = (workdir / "metrics.jsonl").read_text().splitlines()
  assert sum(json.loads(r)["stage"] == "final" for r in records) == 1  # not one per process
  assert (workdir / "results.md").exists() and (workdir / "learning_curves.png").exists()
  log = (workdir / "logs" / "process_1.log").read_text()
  assert "fine-tuning" not in log and "iou/" not in log  # no progress bars or table


def test_killed_two_process_run_resumes_where_it_stopped(two_process_run):
  # Its final numbers equal an uninterrupted run's: test_two_processes_equal_one_process.
  workdir, _, interrupted_at, lines_before = two_process_run
  assert interrupted_at is not None and interrupted_at < 4
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  resumed = records[lines_before:]
  assert not [r for r in resumed if r["stage"] == "transfer"]
  assert min(r["step"] for r in resumed if r["stage"] == "meta_aw") == interrupted_at + 1


# --------------------------------------------------------------------------- the launcher
PROBE = """
import os, sys, time
if os.environ["MEDDA_PROCESS_ID"] == os.environ.get("STALL_PROCESS", "-1"):
  time.sleep(600)  # never joins
from medda_jax import parallel
parallel.maybe_initialize_distributed()
import jax, numpy as np
me = jax.process_index()
if str(me) == os.environ.get("LATE_PROCESS"):  # reaches its first collective late
  time.sleep(32)  # longer than gloo's 30 s to set up the collectives
print("gathered", parallel.allgather(np.array([me * 10, me * 10 + 1])).tolist(),
      parallel.allgather_json({"p": me, "name": "x" * me}), flush=True)
sys.exit(int(os.environ.get("EXIT_CODE_OF_1", "0")) if me == 1 else 0)
"""


def test_launcher_gathers_across_processes(tmp_path):
  # Process 2 comes to the gather over 30 s after the others; the collectives were set up
  # when the processes started, so they wait for it.
  proc = _launch(3, sys.executable, "-c", PROBE, log_dir=tmp_path, env={"LATE_PROCESS": "2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  gathered = ("gathered [0, 1, 10, 11, 20, 21] [{'p': 0, 'name': ''}, {'p': 1, 'name': 'x'}, "
              "{'p': 2, 'name': 'xx'}]")
  assert gathered in proc.stdout
  assert gathered in (tmp_path / "process_2.log").read_text()


CHECKPOINT_PROBE = """
import sys
from medda_jax import parallel
parallel.maybe_initialize_distributed()
import jax, jax.numpy as jnp
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.errors import DataError
me, directory = jax.process_index(), sys.argv[1]
local = {"w": jnp.arange(4.0) * 3, "step": jnp.array(7)}  # the same on every process
ckpt = Checkpointer(directory)
if ckpt.latest_step() is None:
  ckpt.save(5, local, {"data": {"next_index": 10 + me}, "note": "n"})
  ckpt.close()
  ckpt = Checkpointer(directory)
try:
  state, extra = ckpt.restore(jax.tree.map(jnp.zeros_like, local))
except DataError as e:
  print("refused:", e, flush=True)
  sys.exit(0)
assert all(parallel.host_local(x) for x in jax.tree.leaves(state)) == (jax.process_count() > 1)
print("restored", me, state["w"].tolist(), int(state["step"]), extra, flush=True)
"""


def test_checkpoint_keeps_each_process_data_position(tmp_path):
  directory = tmp_path / "ckpt"
  proc = _launch(2, sys.executable, "-c", CHECKPOINT_PROBE, str(directory), log_dir=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "restored 0 [0.0, 3.0, 6.0, 9.0] 7 {'data': {'next_index': 10}, 'note': 'n'}" in \
      proc.stdout
  assert "restored 1 [0.0, 3.0, 6.0, 9.0] 7 {'data': {'next_index': 11}, 'note': 'n'}" in \
      (tmp_path / "process_1.log").read_text()
  # One process cannot continue two pipelines that stood at different positions.
  single = subprocess.run([sys.executable, "-c", CHECKPOINT_PROBE, str(directory)],
                          capture_output=True, text=True, cwd=conftest.REPO, timeout=120)
  assert single.returncode == 0, single.stderr[-3000:]
  assert "refused:" in single.stdout and "resume it with 2 processes, not 1" in single.stdout


def test_launcher_reports_a_failing_process(tmp_path):
  proc = _launch(2, sys.executable, "-c", PROBE, env={"EXIT_CODE_OF_1": "7"}, log_dir=tmp_path)
  assert proc.returncode == 7
  assert "process 1 failed: exit code 7" in proc.stderr


def test_launcher_bounds_the_wait_for_a_process_that_never_joins(tmp_path):
  start = time.time()
  proc = _launch(2, sys.executable, "-c", PROBE, log_dir=tmp_path, timeout=120,
                 env={"STALL_PROCESS": "1", "MEDDA_INIT_TIMEOUT": "5"})
  assert proc.returncode != 0
  assert "process 0 failed" in proc.stderr
  assert time.time() - start < 90


@pytest.mark.parametrize("args, message", [
    ([], "usage"),
    (["two", "--", "true"], "N must be a positive integer"),
    (["2", "true"], "usage"),
    (["2", "--devices-per-process", "x", "--", "true"], "--devices-per-process needs"),
])
def test_launcher_rejects_bad_arguments(args, message):
  proc = subprocess.run(["bash", LOCAL, *args], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2
  assert message in proc.stderr


# ------------------------------------------------------------------- the other methods
def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


def _printed_metrics(stdout: str) -> dict:
  """The final metrics a run prints (gloo may print a line of its own before them)."""
  return _flat(json.loads(stdout[stdout.index("{"):]))


def _two_processes(workdir, *args):
  proc = _launch(2, sys.executable, "-m", "medda_jax.train", f"--workdir={workdir}", *args,
                 log_dir=workdir.parent / "logs")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _printed_metrics(proc.stdout)


def _assert_same_metrics(got, want):
  assert got.keys() == want.keys() and len(got) > 5
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_transfer_on_two_processes_equals_one_process(tmp_path, transfer_run, demo_cache):
  # MMTL's mixed mini-batches are loaded per process; FTA and OCTL run replicated stages.
  # One optimizer, seed and budget: their runs equal the same runs of the shared smoke run
  # (two devices of one process; every run depends on its optimizer, seed and budget only).
  workdir = tmp_path / "two"
  _two_processes(workdir, "--config=configs/transfer.py:smoke", "--config.optimizers=('adam',)",
                 "--config.methods=('fta','octl','mmtl')", "--config.seeds=(0,)",
                 "--config.budgets=(('small',1,2),)",
                 f"--config.data.cache_dir={demo_cache}")
  got = json.loads((workdir / "transfer_results.json").read_text())
  want = json.loads((transfer_run[0] / "transfer_results.json").read_text())
  assert len(got) == 4 and {k.split("/")[-2] for k in got} == {"source_model", "fta", "octl",
                                                               "mmtl"}
  _assert_same_metrics(_flat(got), _flat({key: want[key] for key in got}))


# The GAN methods' references are their shared smoke runs, made on two devices of one
# process (tests/conftest.py). The two-process runs train a part of the same config whose
# results do not depend on the rest (each classifier and each domain pair starts from its
# own seed), and must print the same metrics as that part of the reference.
def test_wgan_on_two_processes_equals_one_process(tmp_path, wgan_run):
  # Both class WGANs and the ResNet: its batch norm reduces over the batch of both processes
  # (the other classifiers take the same sharded steps).
  got = _two_processes(tmp_path / "two", "--config=configs/wgan_synth.py:smoke",
                       "--config.classifiers=('resnet50',)")
  want = _printed_metrics(wgan_run[1].stdout)
  _assert_same_metrics(got, {k: v for k, v in want.items() if "/resnet50/" in k})


def test_stargan_on_two_processes_equals_one_process(tmp_path, stargan_run):
  # Every domain's baseline classifier, one pair's StarGAN + CyCADA and adapted classifier
  # (the other pairs repeat those steps), and the pooled spread.
  workdir = tmp_path / "two"
  got = _two_processes(workdir, "--config=configs/stargan.py:smoke",
                       "--config.pairs=('mnist->mnist_m',)")
  pair = json.loads((workdir / "pairs.json").read_text())
  want = json.loads((stargan_run[0] / "pairs.json").read_text())["mnist->mnist_m"]
  assert pair.keys() == {"mnist->mnist_m"}
  _assert_same_metrics(_flat(pair["mnist->mnist_m"]), _flat(want))
  reference = _printed_metrics(stargan_run[1].stdout)
  for key in ("adapted_auc/mnist->mnist_m", "external_auc/mnist->mnist_m", "spread/0.5",
              "spread/1"):
    assert got[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-6), key


def test_host_inner_loop_on_two_processes_equals_one_process(tmp_path, demo_cache):
  """The host executor: each process adapts its own task, the deltas are all-gathered."""
  host = ["--config.engine.inner_loop=host", "--config.meta.rules=('idw',)",
          "--config.finetune.scratch=False", "--config.transfer.enabled=False"]
  two = _launch(2, *_train_command(tmp_path / "two", demo_cache), *host,
                log_dir=tmp_path / "logs")
  assert two.returncode == 0, two.stderr[-3000:]
  one = run_train(tmp_path / "one", f"--config.data.cache_dir={demo_cache}", *host)
  assert one.returncode == 0, one.stderr[-3000:]
  got, want = final_metrics(tmp_path / "two"), final_metrics(tmp_path / "one")
  assert got.keys() == want.keys() == {"iou/meta_idw/thalamus_t1w", "iou/meta_idw/caudate_t2w_like",
                                       "iou/meta_idw/putamen_lowres_noisy",
                                       "iou_std/meta_idw/thalamus_t1w",
                                       "iou_std/meta_idw/caudate_t2w_like",
                                       "iou_std/meta_idw/putamen_lowres_noisy"}
  np.testing.assert_allclose(_values(got), _values(want), rtol=1e-6, atol=1e-6)
  losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
             if r["stage"] == "meta_idw"] for d in (tmp_path / "two", tmp_path / "one")]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
  assert len(losses[0]) == 4
