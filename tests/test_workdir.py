"""The workdir's guarantees, shared by every method through train.py and the engine loop:
one error line for an unusable workdir, one run at a time, a config change named before it
mixes with the old run, atomic progress files, a checkpoint and a clean exit on
SIGINT/SIGTERM, and an honest NaN message when no checkpoint exists yet."""

import fcntl
import json
import shutil
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import checkpoint_steps, run_train
from medda_jax import files
from medda_jax.engine import workdir
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.loop import run_loop
from medda_jax.errors import NonFiniteLossError


def _one_error_line(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "USAGE" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-2000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def test_missing_or_unusable_workdir_is_one_error_line(tmp_path):
  _one_error_line(run_train(""), "--workdir=DIR is required")
  regular = tmp_path / "file"
  regular.write_text("x")
  _one_error_line(run_train(regular), "is a file, not a directory")
  _one_error_line(run_train(regular / "sub"), "a part of its path is a regular file")


def test_second_run_on_a_locked_workdir_stops(tmp_path):
  wd = tmp_path / "w"
  wd.mkdir()
  with open(wd / workdir.LOCK_FILE, "a+") as held:  # another run holds the workdir
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242\n")
    held.flush()
    _one_error_line(run_train(wd), "is in use by another run (pid 4242)")
  assert not (wd / "metrics.jsonl").exists()


def test_changed_config_is_named_before_it_mixes_with_the_finished_run(smoke_run, tmp_path):
  wd = tmp_path / "w"
  shutil.copytree(smoke_run[0], wd)
  before = (wd / "results.json").read_bytes()
  proc = run_train(wd, "--config.meta.inner.learning_rate=0.5", "--config.model.features=8")
  _one_error_line(proc, "was started with another config", "meta.inner.learning_rate",
                  "model.features", "--allow_config_change")
  assert (wd / "results.json").read_bytes() == before  # the old table was not reprinted


def test_allowed_config_change_is_recorded(tmp_path):
  old = {"meta": {"lr": 0.1, "shots": (2, 3)}, "data": {"cache_dir": "a"}}
  (tmp_path / "metrics.jsonl").write_text('{"stage": "x"}\n')  # an earlier run's progress
  workdir.check_config(tmp_path, old, allow_change=False, write=True)
  same_but_cache = {"meta": {"lr": 0.1, "shots": (2, 3)}, "data": {"cache_dir": "b"}}
  workdir.check_config(tmp_path, same_but_cache, allow_change=False, write=True)
  new = {"meta": {"lr": 0.2, "shots": (2, 3)}, "data": {"cache_dir": "b"}}
  with pytest.raises(workdir.WorkdirError, match=r"meta\.lr: 0\.1 -> 0\.2"):
    workdir.check_config(tmp_path, new, allow_change=False, write=True)
  workdir.check_config(tmp_path, new, allow_change=True, write=True)
  assert json.loads((tmp_path / "config.json").read_text())["meta"]["lr"] == 0.2
  changes = [json.loads(line) for line in
             (tmp_path / workdir.CHANGES_FILE).read_text().splitlines()]
  assert [c["changes"] for c in changes] == [["meta.lr: 0.1 -> 0.2"]]


def test_a_workdir_without_progress_takes_the_new_config(tmp_path):
  workdir.check_config(tmp_path, {"lr": 0.1}, allow_change=False, write=True)
  workdir.check_config(tmp_path, {"lr": 0.3}, allow_change=False, write=True)  # no error
  assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.3}


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
  target = tmp_path / "runs.json"
  files.write_text(target, '{"a": 1}')
  with pytest.raises(RuntimeError):
    with files.atomic_path(target) as tmp:
      tmp.write_text('{"a": 1, "b"')  # killed half-way
      raise RuntimeError("killed")
  assert target.read_text() == '{"a": 1}'
  assert [p.name for p in tmp_path.iterdir()] == ["runs.json"]  # no temporary left behind


class _Batches:
  """A stand-in for a grain iterator: batch k is the number k, its position is `k`."""

  def __init__(self):
    self.k = 0

  def __next__(self):
    self.k += 1
    return jnp.float32(self.k)

  def get_state(self):
    return {"k": self.k}

  def set_state(self, state):
    self.k = state["k"]


def _step(state, batch):
  state = {"w": state["w"] * 0.5 + batch}
  return state, {"loss": state["w"], "finite": jnp.isfinite(state["w"])}


def _run(directory, total_calls=6, step=_step):
  return run_loop("toy", {"w": jnp.float32(0.0)}, step, _Batches(), total_calls=total_calls,
                  steps_per_call=1, checkpointer=Checkpointer(directory), writer=None,
                  checkpoint_every=4, show_progress=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(
    tmp_path, monkeypatch, signum):
  reference = _run(tmp_path / "reference")

  def interrupted_step(state, batch):
    if int(batch) == 2:  # the signal arrives during the second call
      workdir._request_stop(signum, None)
    return _step(state, batch)

  monkeypatch.setattr(workdir, "_stop_signal", None)
  with pytest.raises(workdir.Interrupted, match="checkpoint saved at step 2") as e:
    _run(tmp_path / "run", step=interrupted_step)
  assert e.value.exit_code == 128 + signum
  assert checkpoint_steps(tmp_path / "run") == [2]  # not the scheduled step 4
  monkeypatch.setattr(workdir, "_stop_signal", None)
  resumed = _run(tmp_path / "run")
  np.testing.assert_array_equal(resumed.state["w"], reference.state["w"])
  assert resumed.curve == reference.curve


def test_a_signal_outside_a_training_loop_stops_at_once(monkeypatch):
  monkeypatch.setattr(workdir, "_stop_signal", None)
  with pytest.raises(KeyboardInterrupt):  # nothing to checkpoint: no waiting for a loop
    workdir._request_stop(signal.SIGTERM, None)


def test_nan_message_without_a_checkpoint_says_so(tmp_path):
  def nan_step(state, batch):
    return state, {"loss": jnp.float32(jnp.nan), "finite": jnp.bool_(False)}

  with pytest.raises(NonFiniteLossError) as e:
    _run(tmp_path / "c", step=nan_step)
  assert "None" not in str(e.value)
  assert "no checkpoint of this stage was saved yet" in str(e.value)
