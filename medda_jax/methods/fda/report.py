"""FDA's tables: the choice of beta from the validation sweeps, and the paper's Table 2 shape
(rows = pairs grouped by shift severity, columns = no DA and each method at the averaged-
optimal and the per-pair-optimal beta), mean +- std over seeds of the source model.
"""

from __future__ import annotations

import numpy as np

SETTINGS = (("avg", "β averaged optimal"), ("pair", "β optimal per pair"))
TITLES = {"single": "single swap", "mst": "MST", "srsim_3d": "3D", "srsim_2.5d": "2.5D",
          "srsim_2d": "2D"}


def val_key(src: str, tgt: str, seed: int) -> str:
  return f"val/{src}->{tgt}/seed{seed}"


def test_key(src: str, tgt: str, seed: int) -> str:
  return f"test/{src}->{tgt}/seed{seed}"


def select_betas(runs: dict, pairs, seed: int, methods) -> dict:
  """{"avg": {method: beta}, "pair": {"src->tgt": {method: beta}}} for one seed: the beta of
  the highest validation sDice of each pair, and the one of the highest sDice averaged over
  pairs (ties: the smaller beta)."""
  sweeps = {f"{s}->{t}": runs[val_key(s, t, seed)] for s, t in pairs}
  betas = next(iter(sweeps.values()))["betas"]
  out = {"avg": {}, "pair": {p: {} for p in sweeps}}
  for m in methods:
    curves = np.array([sweeps[p]["sdice"][m] for p in sweeps])  # [pairs, betas]
    out["avg"][m] = float(betas[int(np.argmax(curves.mean(axis=0)))])
    for p, curve in zip(sweeps, curves):
      out["pair"][p][m] = float(betas[int(np.argmax(curve))])
  return out


def columns(c) -> list[str]:
  return ["no_da"] + [f"{m}/{s}" for s, _ in SETTINGS for m in c.fda.methods]


def _cell(run: dict, col: str, field: str = "sdice") -> float:
  if col == "no_da":
    return run["no_da"][field]
  method, setting = col.split("/")
  return run[setting][method][field]


def summarise(runs: dict, c) -> dict:
  """Rows per pair (mean, std, n over seeds), the average row (per seed the mean over
  pairs, then over seeds) and the selected betas."""
  pairs = [tuple(p) for p in c.data.pairs]
  cols = columns(c)
  rows = []
  for (src, tgt), group in zip(pairs, c.data.severity):
    cells = {}
    for col in cols:
      for field in ("sdice", "dice"):
        vals = [_cell(runs[test_key(src, tgt, s)], col, field) for s in c.seeds]
        cells.setdefault(col, {})[field] = [float(np.mean(vals)), float(np.std(vals)), len(vals)]
    rows.append({"pair": f"{src}->{tgt}", "severity": group, "cells": cells})
  average = {}
  for col in cols:
    for field in ("sdice", "dice"):
      per_seed = [np.mean([_cell(runs[test_key(s_, t_, s)], col, field) for s_, t_ in pairs])
                  for s in c.seeds]
      average.setdefault(col, {})[field] = [float(np.mean(per_seed)), float(np.std(per_seed)),
                                            len(per_seed)]
  betas = {str(s): select_betas(runs, pairs, s, c.fda.methods) for s in c.seeds}
  sweep = {}
  for m in c.fda.methods:
    curves = [[runs[val_key(s_, t_, s)]["sdice"][m] for s_, t_ in pairs] for s in c.seeds]
    sweep[m] = np.mean(np.array(curves), axis=(0, 1)).tolist()  # [betas]
  no_da_val = float(np.mean([runs[val_key(s_, t_, s)]["no_da"] for s_, t_ in pairs
                             for s in c.seeds]))
  return {"columns": cols, "rows": rows, "average": average, "betas": betas,
          "sweep": {"betas": list(c.fda.betas), "sdice": sweep, "no_da": no_da_val}}


def _fmt(cell) -> str:
  return f"{cell[0]:.3f} ± {cell[1]:.3f}"


def tables_markdown(table: dict, c, label: str) -> str:
  cols = table["columns"]
  heads = ["no DA"] + [f"{TITLES[m]} {'avg' if s == 'avg' else 'pair'}"
                       for s, _ in SETTINGS for m in c.fda.methods]
  out = [f"### Target test surface Dice ({c.eval.tolerance_mm:g} mm) per 3-D scan, "
         "Table-2 shape", "",
         f"{label}", "",
         f"mean ± std over {len(c.seeds)} seeds of the source model (each cell: the mean over "
         f"the pair's {c.data.test_subjects} test scans). 'avg' = {SETTINGS[0][1]} (one β per "
         f"method maximising the validation sDice averaged over pairs; the recommended "
         f"setting), 'pair' = {SETTINGS[1][1]}. Window {c.fda.window}, n_MST = {c.fda.n_mst}, "
         f"m = {c.fda.neighbours}; single swap = one random donor; MST = {c.fda.n_mst} random "
         "donors; 3D / 2.5D / 2D = SR-SIM donors + MST.", "",
         "| group | pair | " + " | ".join(heads) + " |",
         "|---|---|" + "---|" * len(heads)]
  for row in table["rows"]:
    out.append(f"| {row['severity']} | {row['pair']} | "
               + " | ".join(_fmt(row["cells"][col]["sdice"]) for col in cols) + " |")
  out.append("| **average** | | " + " | ".join(_fmt(table["average"][col]["sdice"])
                                              for col in cols) + " |")
  out += ["", "### Selected β per seed (validation scans)", "",
          "| seed | setting | " + " | ".join(TITLES[m] for m in c.fda.methods) + " |",
          "|---|---|" + "---|" * len(c.fda.methods)]
  for seed, chosen in table["betas"].items():
    out.append(f"| {seed} | averaged | "
               + " | ".join(f"{chosen['avg'][m]:g}" for m in c.fda.methods) + " |")
    for pair, betas in chosen["pair"].items():
      out.append(f"| {seed} | {pair} | "
                 + " | ".join(f"{betas[m]:g}" for m in c.fda.methods) + " |")
  sweep = table["sweep"]
  out += ["", f"### Validation sDice vs β (mean over pairs and seeds; no DA "
          f"{sweep['no_da']:.3f})", "",
          "| β | " + " | ".join(TITLES[m] for m in c.fda.methods) + " |",
          "|---|" + "---|" * len(c.fda.methods)]
  for i, beta in enumerate(sweep["betas"]):
    out.append(f"| {beta:g} | " + " | ".join(f"{sweep['sdice'][m][i]:.3f}"
                                             for m in c.fda.methods) + " |")
  out.append("")
  return "\n".join(out)


def final_metrics(table: dict) -> dict:
  """The average row, and every pair's cells, as flat sDice means."""
  final = {f"sdice/average/{col}": cell["sdice"][0] for col, cell in table["average"].items()}
  for row in table["rows"]:
    for col, cell in row["cells"].items():
      final[f"sdice/{row['pair']}/{col}"] = cell["sdice"][0]
  return final
