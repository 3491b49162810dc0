"""Where a run's time goes: seconds spent compiling and the time to the first training call.

Compile time is summed from JAX's own monitoring events (tracing to a jaxpr, lowering to
StableHLO, XLA's compilation; for a computation found in the persistent compilation cache
the last is the time to load it). Hits and misses of that cache are counted too: a miss is
a computation XLA compiled. The first training call is the first call of
`engine.loop.run_loop` that finishes in this process, whatever stage it belongs to.

`train.py` starts the clock before the method runs and writes `timing.json` into the
workdir when it ends; the loop writes it as soon as the first call is done too, so the
figure exists even for a run stopped right after (benchmarks/first_step.py reads it).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax

from medda_jax.parallel import is_main_process

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "xla_compile_s"}
CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "compilation_cache_hits",
                "/jax/compilation_cache/cache_misses": "compilation_cache_misses"}
FILE = "timing.json"


class _Clock:
  def __init__(self):
    self.started: float | None = None
    self.workdir: pathlib.Path | None = None
    self.first_call_s: float | None = None
    self.seconds = dict.fromkeys(EVENTS.values(), 0.0)
    self.cache = dict.fromkeys(CACHE_EVENTS.values(), 0)
    self.listening = False

  def on_duration(self, event: str, seconds: float, **_):
    if event in EVENTS:
      self.seconds[EVENTS[event]] += seconds

  def on_event(self, event: str, **_):
    if event in CACHE_EVENTS:
      self.cache[CACHE_EVENTS[event]] += 1


_clock = _Clock()


def start(workdir) -> None:
  """Starts (or restarts) the run's clock and compile-time accounting."""
  _clock.started = time.perf_counter()
  _clock.workdir = pathlib.Path(workdir)
  _clock.first_call_s = None
  _clock.seconds = dict.fromkeys(EVENTS.values(), 0.0)
  _clock.cache = dict.fromkeys(CACHE_EVENTS.values(), 0)
  if not _clock.listening:
    jax.monitoring.register_event_duration_secs_listener(_clock.on_duration)
    jax.monitoring.register_event_listener(_clock.on_event)
    _clock.listening = True


def first_call_done() -> None:
  """Marks the first finished training call of the process (later calls: no effect)."""
  if _clock.started is None or _clock.first_call_s is not None:
    return
  _clock.first_call_s = time.perf_counter() - _clock.started
  write()


def summary() -> dict:
  """Seconds since `start`, to the first training call, and compiling (by phase and in
  all), with the persistent cache's hits and misses; empty before `start`."""
  if _clock.started is None:
    return {}
  compiling = {k: round(v, 3) for k, v in _clock.seconds.items()}
  return {"wall_s": round(time.perf_counter() - _clock.started, 3),
          "first_call_s": None if _clock.first_call_s is None else round(_clock.first_call_s, 3),
          "compile_s": round(sum(_clock.seconds.values()), 3), **compiling,
          **_clock.cache,
          "backend": jax.default_backend()}


def write() -> None:
  """Writes `summary()` to the workdir's timing.json (process 0 only)."""
  if _clock.workdir is None or not is_main_process():
    return
  path = _clock.workdir / FILE
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(summary(), indent=1) + "\n")
  tmp.replace(path)
