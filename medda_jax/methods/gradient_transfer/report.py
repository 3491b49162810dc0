"""The result tables of gradient transfer: target and source surface Dice per optimizer, budget
and method, mean and std over seeds of the pair-averaged scores.
"""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- tables
def run_key(opt, source, target, budget, method, seed) -> str:
  return f"{opt}/{source}->{target}/{budget}/{method}/{seed}"


def summarise(results: dict, c) -> dict:
  """{opt: {budget: {column: {target|source: (mean, std)}}}}: per seed the mean over
  pairs, then mean and std over seeds. Column 'none' is the source model unadapted."""
  table: dict = {}
  columns = ["none"] + list(c.methods)
  for opt in c.optimizers:
    for budget, _, _ in c.budgets:
      for col in columns:
        cell = {}
        for side in ("target", "source"):
          per_seed = []
          for seed in c.seeds:
            vals = []
            for src, tgt in c.data.pairs:
              key = (f"{opt}/{src}->{tgt}/source_model/{seed}" if col == "none" else
                     run_key(opt, src, tgt, budget, col, seed))
              scores = results[key][side]
              vals.append(np.nan if scores is None else scores["sdice"])
            per_seed.append(np.mean(vals))
          cell[side] = (float(np.mean(per_seed)), float(np.std(per_seed)), len(per_seed))
        table.setdefault(opt, {}).setdefault(budget, {})[col] = cell
  return table


def tables_markdown(table: dict, c, label: str) -> str:
  columns = ["none"] + list(c.methods)
  header = "| optimizer | budget | " + " | ".join(columns) + " |"
  rule = "|---|---|" + "---|" * len(columns)
  out = []
  for side, title in (("target", "Target-site test surface Dice x100"),
                      ("source", "Source retention: source-site test surface Dice x100 after "
                                 "adaptation")):
    out += [f"### {title}", "",
            f"mean ± std over {len(c.seeds)} seeds of the average over "
            f"{len(c.data.pairs)} site pair(s); tolerance {c.eval.tolerance_mm:g} mm; "
            f"'none' = source model without adaptation. {label}", "", header, rule]
    for opt, rows in table.items():
      for budget, row in rows.items():
        cells = [f"{row[col][side][0]:.2f} ± {row[col][side][1]:.2f}"
                 if np.isfinite(row[col][side][0]) else "n/a" for col in columns]
        out.append(f"| {opt} | {budget} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)
