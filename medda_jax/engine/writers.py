"""Metrics to `workdir/metrics.jsonl` and TensorBoard, written by process 0 only.

A run killed during an append can leave a last line without its newline: the reader skips
it with a warning, and the next writer cuts it off before appending, so it never glues onto
the next record."""

from __future__ import annotations

import json
import math
import pathlib
import sys
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
      self._tb = _summary_writer_class()(str(pathlib.Path(workdir) / "tensorboard"))
      _cut_partial_line(self.path)

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


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported lazily (only process 0 needs it) and without the
  torch that tensorboardX imports whenever torch is installed: 1.3 s of every run's start
  for a writer of plain floats. torch is hidden only while tensorboardX loads; a later
  `import torch` works as usual."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


def _cut_partial_line(path: pathlib.Path) -> None:
  if not path.exists():
    return
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    with path.open("r+b") as f:
      f.truncate(data.rfind(b"\n") + 1)


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  text = path.read_text()
  lines = text.split("\n")
  if lines[-1].strip():  # no newline after it: an append cut short by a kill
    print(f"warning: {path} ends in an unfinished line (a run stopped while writing it); "
          "it is skipped", file=sys.stderr)
  return [json.loads(line) for line in lines[:-1] if line.strip()]
