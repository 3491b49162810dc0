"""The ablation table, shaped as the paper's Tables 1 and 2: one row per variant (Vanilla,
HED-light aug, + L_Reg, + L_Cons, Stain-AgLr), one column per unseen lab and their mean;
patch-level ROC-AUC, mean +- std over seeds."""

from __future__ import annotations

import numpy as np

from medda_jax.methods.stain_aglr.paper import VARIANTS


def summarise(results: dict, c, labs) -> dict:
  """{variant: {lab or "mean": (mean, std, seeds)}}; "mean" averages the labs per seed
  first."""
  table = {}
  for v in c.variants:
    per_seed = np.array([[results[f"{v}/{seed}"]["auc"][lab] for lab in labs]
                         for seed in c.seeds])
    row = {lab: _cell(per_seed[:, j]) for j, lab in enumerate(labs)}
    if len(labs) > 1:
      row["mean"] = _cell(per_seed.mean(axis=1))
    table[v] = row
  return table


def _cell(values) -> tuple[float, float, int]:
  return float(np.mean(values)), float(np.std(values)), len(values)


def table_markdown(table: dict, c, labs, label: str) -> str:
  columns = list(labs) + (["mean"] if len(labs) > 1 else [])
  out = ["### Unseen-lab patch-level ROC-AUC (paper Tables 1-2 layout)", "",
         f"Trained on lab {c.data.train_lab}; mean ± std over {len(c.seeds)} seeds; model of "
         f"the lowest validation loss; lambda1 (L_Reg) = {c.loss.lambda_reg:g}, lambda2 "
         f"(L_Cons) = {c.loss.lambda_cons:g}. {label}", "",
         "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for v, row in table.items():
    out.append(f"| {VARIANTS[v].title} | " + " | ".join(
        f"{row[col][0]:.4f} ± {row[col][1]:.4f}" for col in columns) + " |")
  out.append("")
  return "\n".join(out)
