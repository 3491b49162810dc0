"""The study's table in the shape of the paper's Table 1: rows are the evaluation sets (the
source site's test subjects and every unseen site), columns the optimiser-budget runs,
cells mean ± std over seeds of the per-volume mean score (one table per class).
"""

from __future__ import annotations

import numpy as np

# The paper's Table 1 (CC-359 surface Dice, source GE 3T), for the reader's comparison.
PAPER_TABLE_1 = {
    "GE15": {"S-1000": 0.9068, "S-25": 0.8345, "S-50": 0.8782, "A-25": 0.8970, "A-50": 0.9076,
             "AG-25": 0.9152, "AG-50": 0.9214, "AG-1000": 0.8181},
    "GE 3 test": {"S-1000": 0.9645, "S-25": 0.9594, "S-50": 0.9629, "A-25": 0.9622,
                  "A-50": 0.9646, "AG-25": 0.9650, "AG-50": 0.9641, "AG-1000": 0.9324},
}


def run_key(column: str, seed: int) -> str:
  return f"{column}/seed{seed}"


def summarise(runs: dict, c, eval_sets: list[str], classes: tuple[str, ...]) -> dict:
  """{class: {evaluation set: {column: (mean, std, seeds)}}} of `c.eval.metric`: per seed
  the mean over the set's volumes, then mean and (population) std over seeds."""
  table: dict = {}
  for cls in classes:
    for row in eval_sets:
      for column, _, _ in c.runs:
        per_seed = [np.mean([v[cls][c.eval.metric] for v in
                             runs[run_key(column, seed)]["volumes"][row].values()])
                    for seed in c.seeds]
        table.setdefault(cls, {}).setdefault(row, {})[column] = (
            float(np.mean(per_seed)), float(np.std(per_seed)), len(per_seed))
  return table


def tables_markdown(table: dict, c, label: str) -> str:
  columns = [r[0] for r in c.runs]
  metric = ("surface Dice at {:g} mm".format(c.eval.tolerance_mm) if c.eval.metric == "sdice"
            else "volumetric Dice")
  out = [f"**{label}**", "",
         "Columns: " + ", ".join(f"{col} = {opt}, {epochs} epochs of "
                                 f"{c.train.steps_per_epoch} iterations"
                                 for col, opt, epochs in c.runs) + ".", ""]
  for cls, rows in table.items():
    out += [f"### {metric}, {cls} (paper Table 1 shape)", "",
            f"mean ± std over {len(c.seeds)} seeds of the mean over each set's volumes; "
            f"source site {c.data.train_site}. {label}", "",
            "| domain | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row, cells in rows.items():
      best = max(cells[col][0] for col in columns)
      out.append(f"| {row} | " + " | ".join(
          (f"**{cells[col][0]:.4f}**" if cells[col][0] == best else f"{cells[col][0]:.4f}")
          + f" ± {cells[col][1]:.4f}" for col in columns) + " |")
    out.append("")
  return "\n".join(out)
