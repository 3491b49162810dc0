"""One resumable training loop for every stage that steps a train state over a stream.

The loop restores the latest checkpoint (train state, data-iterator position, loss curve),
then repeats: next chunk of batches -> jitted chunk step -> stop on a non-finite loss
(keeping the last good checkpoint) -> metrics to metrics.jsonl / TensorBoard -> progress
bar -> checkpoint every `checkpoint_every` calls and at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np

from medda_jax.engine import timing, workdir
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.progress import Progress
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import NonFiniteLossError


@dataclasses.dataclass
class LoopResult:
  state: Any
  curve: list[float]  # mean loss of every call, from the start of the stage


def run_loop(name: str, state, step_fn: Callable, batches: Iterator, *, total_calls: int,
             steps_per_call: int, checkpointer: Checkpointer | None, writer: MetricWriter | None,
             checkpoint_every: int, prepare: Callable = lambda b: b,
             log_keys: tuple[str, ...] | None = None, show_progress: bool = True,
             loss_key: str = "loss", description: str | None = None,
             unit: str = "step", hook=None) -> LoopResult:
  """Runs `state, metrics = step_fn(state, prepare(next(batches)))` until `total_calls`
  calls are done, resuming from `checkpointer` (None: a run too short to checkpoint).
  `batches` must be a grain iterator (its position is checkpointed). Checkpoint steps
  count updates (calls x steps_per_call). Metrics may be scalars or stacked per step
  (the GAN engine's); they are logged as their mean over the call, and `loss_key` names
  the one that makes the curve and the progress bar. `name` is the metrics' stage;
  `description` (default `name`) titles the progress bar and errors, which count in
  `unit`s (e.g. "meta-iteration"). `hook` (e.g. `engine.trainer.KeepBest`) runs after
  every call: `state, stop = hook.after_call(state, calls_done)`; its `get_state()` (JSON)
  is checkpointed and handed back to `set_state` on resume, and a stop ends the stage
  for good (a resumed stopped stage does not train on)."""
  done_calls = 0
  curve: list[float] = []
  stopped = False
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state, extra = checkpointer.restore(state)
    batches.set_state(extra["data"])
    done_calls = int(extra["calls"])
    curve = list(extra.get("curve", []))
    stopped = bool(extra.get("stopped", False))
    if hook is not None:
      hook.set_state(extra["hook"])
  description = name if description is None else description
  progress = Progress(description, total_calls * steps_per_call, done_calls * steps_per_call,
                      ) if show_progress else None
  workdir.loop_started()
  try:
    while done_calls < total_calls and not stopped:
      state, metrics = step_fn(state, prepare(next(batches)))
      metrics = {k: np.mean(v) if k != "finite" else bool(v)
                 for k, v in jax.device_get(metrics).items()}
      done_calls += 1
      timing.first_call_done()
      step = done_calls * steps_per_call
      if not metrics["finite"]:
        last = checkpointer.latest_step() if checkpointer is not None else None
        kept = (f"; the last good checkpoint ({unit} {last}) is kept in "
                f"{checkpointer.directory}" if last is not None else
                "; no checkpoint of this stage was saved yet")
        raise NonFiniteLossError(
            f"non-finite loss or parameters in {description} at {unit} {step}{kept}")
      curve.append(float(metrics[loss_key]))
      logged = {k: v for k, v in metrics.items()
                if k != "finite" and (log_keys is None or k in log_keys)}
      if writer is not None:
        writer.write(name, step, logged)
      if progress is not None:
        progress.update(steps_per_call, loss=metrics[loss_key])
      if hook is not None:
        state, stopped = hook.after_call(state, done_calls)
      signum = workdir.stop_requested()
      if checkpointer is not None and (done_calls % checkpoint_every == 0
                                       or done_calls == total_calls or stopped or signum):
        extra = {"data": batches.get_state(), "calls": done_calls, "curve": curve}
        if hook is not None:
          extra.update(hook=hook.get_state(), stopped=stopped)
        checkpointer.save(step, state, extra)
      if signum:
        saved = (f"checkpoint saved at {unit} {step} in {checkpointer.directory}"
                 if checkpointer is not None else "this stage keeps no checkpoint")
        raise workdir.Interrupted(f"interrupted in {description}: {saved}; rerun the same "
                                  "command to resume", signum)
  finally:
    workdir.loop_ended()
    if progress is not None:
      progress.close()
  return LoopResult(state, curve)
