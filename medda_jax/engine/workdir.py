"""The workdir of a run: checked, locked and bound to its config.

`open_workdir` is called once by `train.py` after the config is validated and before the
method runs, so every method gets the same guarantees:
- a missing, empty or unusable `--workdir` (one under a regular file, say) is one error;
- one run at a time: a second run on the same workdir stops at once (an flock held by
  process 0 for the life of the process, released by the OS however the run ends);
- the config is stored as `config.json`; a later run whose config differs stops with one
  line naming the changed fields, unless `allow_config_change` is given, and then the
  change is appended to `config_changes.jsonl` so the workdir tells the truth.
A workdir that holds no progress yet (a run that stopped on a data error before training)
takes the new config silently: there is nothing to mix it with.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import time
from typing import Any

from medda_jax import files
from medda_jax.errors import MeddaError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
LOCK_FILE = ".lock"
# Fields that do not change results: where caches live.
IGNORED_FIELDS = ("data.cache_dir",)

_lock_handle = None  # the open lock file: the lock lives as long as the process
_stop_signal: int | None = None


class WorkdirError(MeddaError):
  """The workdir is missing, unusable, in use, or was started with another config."""


class Interrupted(MeddaError):
  """SIGINT or SIGTERM: the loop saved a checkpoint at a call boundary and stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for every leaf of a nested dict (tuples as lists, as JSON has them)."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, f"{name}."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'field: old -> new' for every field that differs, ignoring IGNORED_FIELDS."""
  a, b = flatten(old), flatten(new)
  lines = []
  for field in sorted(set(a) | set(b)):
    if field in IGNORED_FIELDS or a.get(field, "<absent>") == b.get(field, "<absent>"):
      continue
    lines.append(f"{field}: {a.get(field, '<absent>')!r} -> {b.get(field, '<absent>')!r}")
  return lines


def _has_progress(workdir: pathlib.Path) -> bool:
  """Whether an earlier run left anything a rerun would resume or report."""
  checkpoints = workdir / "checkpoints"
  if checkpoints.is_dir() and any(checkpoints.iterdir()):
    return True
  metrics = workdir / "metrics.jsonl"
  return (metrics.is_file() and metrics.stat().st_size > 0) or (
      workdir / "results.json").is_file()


def prepare(workdir: str | None) -> pathlib.Path:
  """The workdir as a created directory, or one WorkdirError saying why it cannot be."""
  if workdir is None or not str(workdir).strip():
    raise WorkdirError("--workdir=DIR is required (checkpoints, metrics and results go there)")
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise WorkdirError(f"--workdir={workdir} cannot be created: a part of its path is a "
                       "regular file") from None
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} cannot be created: {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir} is not writable")
  return path


def lock(path: pathlib.Path) -> None:
  """Takes the workdir's lock for the life of this process, or stops naming the holder."""
  global _lock_handle
  handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held open on purpose
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "unknown"
    handle.close()
    raise WorkdirError(f"{path} is in use by another run (pid {holder}); wait for it to end "
                       "or choose another --workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"{os.getpid()}\n")
  handle.flush()
  _lock_handle = handle


def check_config(path: pathlib.Path, config: dict[str, Any], allow_change: bool,
                 write: bool) -> None:
  """Compares `config` with the one the workdir was started with (see the module doc)."""
  stored = path / CONFIG_FILE
  if stored.is_file() and _has_progress(path):
    try:
      old = json.loads(stored.read_text())
    except json.JSONDecodeError:
      raise WorkdirError(f"{stored} is not readable JSON; restore it or choose another "
                         "--workdir") from None
    changes = changed_fields(old, config)
    if changes and not allow_change:
      raise WorkdirError(f"{path} was started with another config ({'; '.join(changes)}); "
                         "rerun with --allow_config_change to go on with the new one")
    if changes and write:
      with open(path / CHANGES_FILE, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "changes": changes}) + "\n")
  if write:
    files.write_text(stored, json.dumps(config, indent=1, sort_keys=True) + "\n")


_loops_running = 0  # training loops under way: only they can stop at a checkpoint


def loop_started() -> None:
  global _loops_running
  _loops_running += 1


def loop_ended() -> None:
  global _loops_running
  _loops_running -= 1


def _request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
  global _stop_signal
  if _stop_signal is not None or not _loops_running:  # a second signal, or no loop: stop now
    raise KeyboardInterrupt
  _stop_signal = signum
  print(f"\n{signal.Signals(signum).name}: stopping at the next checkpoint boundary "
        "(send it again to stop at once)", flush=True)


def stop_requested() -> int | None:
  """The signal (SIGINT/SIGTERM) that asked the run to stop, if any."""
  return _stop_signal


def install_signal_handlers() -> None:
  """SIGINT/SIGTERM ask the training loop to checkpoint and stop at its next call."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _request_stop)


def open_workdir(workdir: str | None, config: dict[str, Any], *, allow_config_change: bool,
                 main_process: bool = True) -> pathlib.Path:
  """Checks, locks (process 0) and binds the workdir to `config`; see the module doc."""
  path = prepare(workdir)
  if main_process:
    lock(path)
  check_config(path, config, allow_config_change, write=main_process)
  install_signal_handlers()
  return path
