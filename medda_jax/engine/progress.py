"""A progress bar with steps/s, ETA and current metrics (process 0 only)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from medda_jax.parallel import is_main_process


class Progress:
  def __init__(self, description: str, total: int, initial: int = 0):
    self.bar = tqdm(total=total, initial=initial, desc=description, unit="step",
                    disable=not is_main_process(), file=sys.stderr, dynamic_ncols=True,
                    mininterval=2.0)

  def update(self, n: int = 1, **metrics) -> None:
    if metrics:
      self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()}, refresh=False)
    self.bar.update(n)

  def close(self) -> None:
    self.bar.close()

  # As a context manager the bar is closed (and its line ended) also when training stops
  # with an error, so the error message starts on a line of its own.
  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
