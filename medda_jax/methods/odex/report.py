"""ODEx's tables: per method the final mean Dice, BWT, FWT and pool size (mean +- std over
seeds), and the per-stage Dice matrix R (rows: after training stage i; columns: test set of
stage j; mean over seeds)."""

from __future__ import annotations

import numpy as np

TITLES = {"odex": "ODEx", "sequential": "sequential fine-tuning", "ewc": "EWC", "lwf": "LwF",
          "joint": "joint (upper bound)"}
COLUMNS = ("dice", "bwt", "fwt", "pool_size")


def _cell(values):
  return (float(np.mean(values)), float(np.std(values)), len(values))


def summarise(runs: dict, methods, seeds) -> dict:
  """{method: {column: (mean, std, seeds) or None}}; Dice = mean over stages of the last
  row; joint training has no BWT / FWT."""
  table = {}
  for m in methods:
    rs = [runs[f"{m}/{s}"] for s in seeds]
    row = {"dice": _cell([np.mean(r["final"]) for r in rs]),
           "pool_size": _cell([r["pool_size"] for r in rs])}
    for col in ("bwt", "fwt"):
      row[col] = _cell([r[col] for r in rs]) if m != "joint" else None
    table[m] = row
  return table


def matrix(runs: dict, method: str, seeds) -> np.ndarray:
  return np.mean([runs[f"{method}/{s}"]["matrix"] for s in seeds], axis=0)


def table_markdown(table: dict, runs: dict, c, stages, label: str) -> str:
  fmt = lambda v, scale=1.0: "—" if v is None else f"{v[0] * scale:.3f} ± {v[1] * scale:.3f}"  # noqa: E731
  out = ["### Continual hippocampus segmentation: final Dice, BWT, FWT, pool size", "",
         f"mean ± std over {len(c.seeds)} seeds; Dice = mean over the {len(stages)} stages' "
         "test sets after the last stage; BWT = mean_i<N R[N][i] − R[i][i]; FWT = mean_i>1 "
         f"R[i][i] − R[1][i]. {label}", "",
         "| method | Dice | BWT | FWT | models |", "|---|---|---|---|---|"]
  for m, row in table.items():
    size = row["pool_size"]
    out.append(f"| {TITLES[m]} | {fmt(row['dice'])} | {fmt(row['bwt'])} | {fmt(row['fwt'])} "
               f"| {size[0]:.1f} ± {size[1]:.1f} |")
  for m in table:
    if m == "joint":
      continue
    r = matrix(runs, m, c.seeds)
    out += ["", f"#### {TITLES[m]}: Dice matrix R (row: after training stage; column: test "
            "stage; mean over seeds)", "", "| after \\ test | " + " | ".join(stages) + " |",
            "|---|" + "---|" * len(stages)]
    for i, name in enumerate(stages):
      out.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in r[i]) + " |")
  if "odex" in table:
    out += ["", "#### ODEx pool per seed: model trained at each stage (* = expansion), and "
            "test images routed to each model after the last stage", ""]
    for s in c.seeds:
      r = runs[f"odex/{s}"]
      steps = " ".join(f"{t}{'*' if e else ''}" for t, e in zip(r["trained"], r["expanded"]))
      routed = "; ".join(f"{name}: {counts}" for name, counts in zip(stages, r["routing"][-1]))
      out.append(f"- seed {s}: trained {steps}; routing {routed}")
  out.append("")
  return "\n".join(out)
