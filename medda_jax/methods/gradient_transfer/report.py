"""The result tables of gradient transfer: target and source surface Dice (CC359) or Dice
(prostate) per optimizer, budget and method, mean and std over seeds of the pair-averaged
scores, next to the lower bound (the source model, 'none') and the upper bound (trained on
all of the target's training data, 'upper').
"""

from __future__ import annotations

import numpy as np


METRIC_NAMES = {"sdice": "surface Dice", "dice": "Dice"}
SELECTION = {"last": "the last model of each run",
             "best_val": "the best model on the target's validation subjects (every epoch)"}


# --------------------------------------------------------------------------- tables
def run_key(opt, source, target, budget, method, seed) -> str:
  return f"{opt}/{source}->{target}/{budget}/{method}/{seed}"


def upper_key(opt, target, seed) -> str:
  return f"{opt}/{target}/target_model/{seed}"


def columns(c) -> list[str]:
  """'none' (lower bound), the methods, and 'upper' when the config asks for it."""
  return ["none"] + list(c.methods) + (["upper"] if c.get("upper_bound", False) else [])


def summarise(results: dict, c) -> dict:
  """{opt: {budget: {column: {target|source: (mean, std)}}}}: per seed the mean over
  pairs, then mean and std over seeds, of config.eval.metric. Column 'none' is the source
  model unadapted, 'upper' the model trained on all target training data."""
  table: dict = {}
  metric = c.eval.get("metric", "sdice")
  for opt in c.optimizers:
    for budget, *_ in c.budgets:
      for col in columns(c):
        cell = {}
        for side in ("target", "source"):
          per_seed = []
          for seed in c.seeds:
            vals = []
            for src, tgt in c.data.pairs:
              key = (f"{opt}/{src}->{tgt}/source_model/{seed}" if col == "none" else
                     upper_key(opt, tgt, seed) if col == "upper" else
                     run_key(opt, src, tgt, budget, col, seed))
              scores = results[key][side]
              vals.append(np.nan if scores is None else scores[metric])
            per_seed.append(np.mean(vals))
          cell[side] = (float(np.mean(per_seed)), float(np.std(per_seed)), len(per_seed))
        table.setdefault(opt, {}).setdefault(budget, {})[col] = cell
  return table


def tables_markdown(table: dict, c, label: str) -> str:
  cols = columns(c)
  metric = c.eval.get("metric", "sdice")
  name = METRIC_NAMES[metric]
  header = "| optimizer | budget | " + " | ".join(cols) + " |"
  rule = "|---|---|" + "---|" * len(cols)
  detail = (f"tolerance {c.eval.tolerance_mm:g} mm" if metric == "sdice" else
            "3-D Dice per test subject")
  post = c.eval.get("postprocess", "none")
  if post == "d7":
    detail += (", slices whose largest component is under the threshold learned on the "
               "target's validation subjects zeroed (spec D7)")
  if post != "none":
    detail += ", largest 3-D connected component kept"
  bounds = "'none' = source model without adaptation (lower bound)"
  if "upper" in cols:
    bounds += "; 'upper' = trained on all target training data (upper bound)"
  out = []
  for side, title in (("target", f"Target-site test {name} x100"),
                      ("source", f"Source retention: source-site test {name} x100 after "
                                 "adaptation")):
    out += [f"### {title}", "",
            f"mean ± std over {len(c.seeds)} seeds of the average over "
            f"{len(c.data.pairs)} site pair(s); {detail}; fine-tuned models: "
            f"{SELECTION[c.eval.get('select', 'last')]}; {bounds}. {label}", "", header, rule]
    for opt, rows in table.items():
      for budget, row in rows.items():
        cells = [f"{row[col][side][0]:.2f} ± {row[col][side][1]:.2f}"
                 if np.isfinite(row[col][side][0]) else "n/a" for col in cols]
        out.append(f"| {opt} | {budget} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)
