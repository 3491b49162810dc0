"""The paper-shaped tables: methods x skin-type groups (AUC, mean +- std over seeds), the gap
between the first and last group, out-of-distribution AUC per domain; and the ITA
labeller's accuracy against the human types."""

from __future__ import annotations

import numpy as np

from medda_jax.methods.melanoma_fairness.paper import TITLES


def group_name(group) -> str:
  return "types " + "&".join(str(t) for t in group)


def columns(c) -> list[str]:
  groups = [group_name(g) for g in c.eval.groups]
  gap = ["gap"] if len(groups) > 1 else []
  return ["held-out"] + groups + gap + [f"OOD {d}" for d in c.data.ood]


def _cell(values) -> tuple[float, float, int]:
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"), \
      float(np.nanstd(values)) if np.isfinite(values).any() else float("nan"), len(values)


def summarise(runs: dict, c) -> dict:
  """{method: {column: (mean, std, seeds)}}; the gap is taken per seed, then averaged."""
  groups = [group_name(g) for g in c.eval.groups]
  table = {}
  for m in c.methods:
    per = [runs[f"{m}/{s}"] for s in c.seeds]
    row = {"held-out": _cell([r["held_out"] for r in per])}
    for g in groups:
      row[g] = _cell([r["groups"][g] for r in per])
    if len(groups) > 1:
      row["gap"] = _cell([r["groups"][groups[0]] - r["groups"][groups[-1]] for r in per])
    for d in c.data.ood:
      row[f"OOD {d}"] = _cell([r["ood"][d] for r in per])
    table[m] = row
  return table


def _fmt(cell) -> str:
  mean, std, _ = cell
  return "n/a" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def table_markdown(table: dict, labeller, info: dict, c) -> str:
  cols = columns(c)
  kept = "&".join(map(str, info["train_types"])) or "all"
  out = [f"**{info['label']}**", "",
         "### Melanoma AUC per skin-type group (paper Tables 3-4 layout)", "",
         f"mean ± std over {len(info['seeds'])} seeds; trained on {info['train_domain']} "
         f"types {kept} ({info['train_images']} images), skin types for grouping: "
         f"{info['groups_by']}; bias head: {info['bias_classes']} classes of "
         f"{info['bias_labels']} labels; {info['init']}. held-out = unseen images of the "
         "training types; gap = AUC(first group) − AUC(last group).", "",
         "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for m, row in table.items():
    out.append(f"| {TITLES[m]} | " + " | ".join(_fmt(row[col]) for col in cols) + " |")
  if labeller:
    out += ["", "### ITA skin-type labeller against the known types", "",
            "| labeller | images | failed (-1) | exact % | within ±1 % |", "|---|---|---|---|---|"]
    for r in labeller:
      out.append(f"| {r['labeller']} | {r['images']} | {r['failed']} | {r['exact']:.1f} | "
                 f"{r['within_1']:.1f} |")
    out += ["", "Confusion (rows: known type 1-6, columns: ITA type 1-6), with hair removal:",
            "", "| known \\ ITA | 1 | 2 | 3 | 4 | 5 | 6 |", "|---|---|---|---|---|---|---|"]
    for t, row in enumerate(labeller[0]["confusion"], start=1):
      out.append(f"| {t} | " + " | ".join(str(v) for v in row) + " |")
  out.append("")
  return "\n".join(out)
