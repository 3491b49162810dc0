"""The result table of MetaMedSeg: test IoU per initialisation and target, mean and std over
shot selections.
"""

from __future__ import annotations

import numpy as np


def results_table(results: dict, inits, targets, seeds) -> dict[str, dict[str, tuple]]:
  table = {}
  for init in inits:
    for target in targets:
      values = np.array([results[f"{init}/{target}/{s}"]["iou"] for s in seeds])
      table.setdefault(init, {})[target] = (float(values.mean()), float(values.std()),
                                            len(values))
  return table


def table_markdown(table, targets, label: str) -> str:
  lines = [f"Test IoU x100, mean ± std over shot selections — {label}", "",
           "| init | " + " | ".join(targets) + " |",
           "|---|" + "---|" * len(targets)]
  for init, row in table.items():
    cells = [f"{row[t][0]:.2f} ± {row[t][1]:.2f}" for t in targets]
    lines.append(f"| {init} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
