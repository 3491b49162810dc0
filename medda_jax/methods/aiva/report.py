"""AIVA's results table, shaped as the paper's Table 1: one row per target site (the
average over its source sites) and an average row; columns source model, AdaBN, AIVA and
the target model (upper bound); mean +- std over seeds.
"""

from __future__ import annotations

import numpy as np

COLUMNS = ("source_model", "adabn", "aiva", "target_model")
TITLES = {"source_model": "source model", "adabn": "AdaBN", "aiva": "AIVA",
          "target_model": "target model"}
DEMO_LABEL = ("DEMO DATA (one real head MRI, synthetic subjects and scanner sites; target "
              "labels hidden from training) — not a reproduction of the paper's numbers")


def label_of(source: str, user_sites: list[str], builtin_used: bool) -> str:
  parts = []
  if builtin_used:
    parts.append(DEMO_LABEL if source == "demo_skull" else "CC359")
  if user_sites:
    parts.append(f"your sites: {', '.join(user_sites)}")
  return "; ".join(parts)


def summarise(results: dict, c, columns) -> dict:
  """{target: {column: (mean, std, seeds)}} of the target test surface Dice x100: per seed
  the mean over the target's source sites, then mean and std over seeds; row 'average'
  averages the targets per seed first."""
  targets = list(dict.fromkeys(t for _, t in c.data.pairs))
  per_seed = {}
  for tgt in targets:
    for col in columns:
      per_seed[(tgt, col)] = [
          np.mean([results[f"{s}->{t}/{col}/{seed}"]["sdice"] for s, t in c.data.pairs
                   if t == tgt]) for seed in c.seeds]
  table = {}
  for tgt in targets:
    table[tgt] = {col: _cell(per_seed[(tgt, col)]) for col in columns}
  if len(targets) > 1:
    table["average"] = {col: _cell(np.mean([per_seed[(t, col)] for t in targets], axis=0))
                        for col in columns}
  return table


def _cell(values) -> tuple[float, float, int]:
  return float(np.mean(values)), float(np.std(values)), len(values)


def table_markdown(table: dict, c, columns, label: str) -> str:
  slice_num = "with" if c.aiva.use_slice_num else "without"
  out = ["### Target-site test surface Dice x100 (paper Table 1 layout)", "",
         f"mean ± std over {len(c.seeds)} seeds of the average over each target's source "
         f"sites; tolerance {c.eval.tolerance_mm:g} mm; k = {c.aiva.k} clusters, alignment "
         f"loss '{c.aiva.loss}', {slice_num} the slice-position feature; the last AIVA model "
         f"is reported (no selection on target labels). {label}", "",
         "| target | " + " | ".join(TITLES[col] for col in columns) + " |",
         "|---|" + "---|" * len(columns)]
  for tgt, row in table.items():
    out.append(f"| {tgt} | " + " | ".join(f"{row[col][0]:.2f} ± {row[col][1]:.2f}"
                                         for col in columns) + " |")
  out.append("")
  return "\n".join(out)
