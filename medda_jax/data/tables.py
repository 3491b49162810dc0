"""Reading the CSV tables that published datasets ship (metadata, labels)."""

from __future__ import annotations

import csv
import gzip
import pathlib
from typing import Sequence

from medda_jax.errors import DataError


def read_csv_rows(path, required: Sequence[str], layout: str) -> list[dict[str, str]]:
  """Rows of a CSV file as dicts with stripped keys and values; a clear DataError (with
  the expected `layout`) when the file is missing, unreadable or lacks a column. A `.gz`
  file is read through gzip (MIMIC-CXR and PadChest ship their tables compressed)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path} does not exist\n{layout}")
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = [c.strip() for c in (reader.fieldnames or [])]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read {path}: {e}") from e
  missing = [c for c in required if c not in columns]
  if missing:
    raise DataError(f"{path} lacks column(s) {missing} (found {columns})\n{layout}")
  return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
