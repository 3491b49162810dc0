"""Supervised training of one classifier on the engine loop, with evaluation and early
stopping: every method that trains a classifier and keeps its best evaluation uses `fit`.

The loop's state is (train state, best variables): `KeepBest` evaluates the variables
every `every` calls, keeps a host copy of the best, and stops after `patience`
evaluations without a better score. Its counters travel in the checkpoint, so a killed
run resumes mid-training, best variables included, and ends where an uninterrupted run
ends.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import grain
import jax
from jax.sharding import Mesh

from medda_jax import parallel
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.loop import run_loop
from medda_jax.engine.supervised import TrainState


def variables(state: TrainState) -> dict:
  """The Flax variables of a train state: {"params", **model_state}."""
  return {"params": state.params, **state.model_state}


class KeepBest:
  """A `run_loop` hook: evaluate every `every` calls, keep the best variables (a later
  equal score replaces the best with `keep_ties`), stop after `patience` evaluations
  without improvement (None: never)."""

  def __init__(self, evaluate: Callable[[dict], float], every: int,
               patience: int | None = None, keep_ties: bool = False, floor: float = -1.0):
    self.evaluate, self.every, self.patience, self.keep_ties = evaluate, every, patience, keep_ties
    self.best_score, self.waited, self.evaluations = floor, 0, 0

  def after_call(self, state, calls: int):
    train, best = state
    if calls % self.every:
      return state, False
    current = variables(train)
    score = float(self.evaluate(current))
    self.evaluations += 1
    if score > self.best_score or (self.keep_ties and score == self.best_score):
      self.best_score, self.waited = score, 0
      best = jax.device_get(current)  # a copy: the next call may donate the train state
    else:
      self.waited += 1
    return (train, best), self.patience is not None and self.waited >= self.patience

  def get_state(self) -> dict:
    return {"best_score": self.best_score, "waited": self.waited,
            "evaluations": self.evaluations}

  def set_state(self, saved: dict) -> None:
    self.best_score, self.waited = saved["best_score"], saved["waited"]
    self.evaluations = saved["evaluations"]


@dataclasses.dataclass
class FitResult:
  best: Any          # the variables of the best evaluation
  best_score: float
  evaluations: int   # evaluations done (epochs, with one evaluation per epoch)
  state: TrainState  # the last train state


def call_batches(total_calls: int, make_batch: Callable[[int], dict]):
  """A grain iterator over `make_batch(k)` for calls k = 0..total_calls-1 (each a pure
  function of k, so the checkpointed position is all a resume needs)."""
  ds = grain.MapDataset.range(total_calls).map(make_batch)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def fit(name: str, state: TrainState, chunk: Callable, make_batch: Callable[[int], dict], *,
        total_calls: int, steps_per_call: int, evaluate: Callable[[dict], float], every: int,
        patience: int | None = None, keep_ties: bool = False, floor: float = -1.0,
        mesh: Mesh | None = None, checkpoint_dir: pathlib.Path | None = None,
        checkpoint_every: int | None = None) -> FitResult:
  """Trains `state` with the compiled `chunk` (see `supervised.build_train_chunk`) for
  `total_calls` calls on `make_batch(k)` ([steps_per_call, batch, ...] host arrays, sharded
  over `data` of `mesh`), evaluating every `every` calls. Checkpointed in
  `checkpoint_dir` (None: not at all) every `checkpoint_every` calls (default `every`) and
  when it stops."""
  hook = KeepBest(evaluate, every, patience, keep_ties, floor)
  best = jax.device_get(variables(state))
  if mesh is not None:
    state = parallel.replicate(state, mesh)

  def step(s, batch):
    train, metrics = chunk(s[0], batch)
    return (train, s[1]), metrics

  ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
  try:
    result = run_loop(
        name, (state, best), step, call_batches(total_calls, make_batch),
        total_calls=total_calls, steps_per_call=steps_per_call, checkpointer=ckpt,
        writer=None, checkpoint_every=checkpoint_every or every, hook=hook,
        prepare=lambda b: parallel.global_batch(b, mesh, "data", batch_dim=1,
                                                process_local=False),
        show_progress=False)
  finally:
    if ckpt is not None:
      ckpt.close()
  train, best = result.state
  return FitResult(best=jax.device_get(best), best_score=hook.best_score,
                   evaluations=hook.evaluations, state=train)
