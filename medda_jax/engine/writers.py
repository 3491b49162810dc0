"""Metrics to `workdir/metrics.jsonl` and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import numpy as np

from medda_jax.parallel import is_main_process


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  def __init__(self, workdir):
    self.enabled = is_main_process()
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"stage": stage, "step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("stage", "step") and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(f"{stage}/{key}", value, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
