"""The finished runs of a sweep (key -> JSON result), kept in one JSON file in the workdir.

A rerun of the same command skips every key already in the table, so a killed sweep
resumes at its first unfinished run. Every process reads the file once at the start and
records the same results (gathered across processes by the method), so all agree on what
is left; process 0 alone rewrites the file, atomically, after every recorded run.
"""

from __future__ import annotations

import json
import pathlib

from medda_jax import files, parallel
from medda_jax.errors import DataError


class RunTableError(DataError):
  """The table file exists but is not a JSON object (truncated or edited by hand)."""


class RunTable:
  def __init__(self, path):
    self.path = pathlib.Path(path)
    self.runs: dict = {}
    if self.path.exists():
      try:
        self.runs = json.loads(self.path.read_text())
      except ValueError as e:
        raise RunTableError(f"{self.path} is not a readable table of finished runs ({e}); "
                            "move it away to redo those runs") from None
      if not isinstance(self.runs, dict):
        raise RunTableError(f"{self.path} is not a table of finished runs (a JSON object); "
                            "move it away to redo those runs")

  def done(self, key: str) -> bool:
    return key in self.runs

  def get(self, key: str):
    return self.runs[key]

  def record(self, key: str, value) -> None:
    """Adds (or replaces) `key`, then rewrites the file (`json.dumps(runs, indent=1)`, in
    the order the runs finished)."""
    self.runs[key] = value
    if parallel.is_main_process():
      files.write_text(self.path, json.dumps(self.runs, indent=1))
