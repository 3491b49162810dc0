"""Paper Table 1 / 2 from the finished runs: Dice (%) per site (class average over the
site's test volumes), mean +- std over seeds, for the last and the val-selected model;
CateNorm rows also give the BN pass of the same network (paper Table 3b)."""

from __future__ import annotations

import numpy as np

NAMES = {"bn": "BN", "bn_continued": "BN continued (equal iterations)", "in": "IN", "gn": "GN",
         "dsbn": "DSBN",
         "catenorm_block1": "CateNorm block 1", "catenorm_block1-4": "CateNorm block 1-4"}
SELECTIONS = {"last": "last model", "val": "val-selected model"}

# Paper Table 1 (single-domain prostate, Dice %), for comparison only.
PAPER_PROSTATE = {
    "BN": (90.08, 87.22, 88.99), "IN": (89.05, 88.37, 88.98), "GN": (89.15, 88.61, 89.16),
    "CateNorm block 1": (91.36, 88.55, 89.31), "CateNorm block 1-4": (91.41, 87.57, 89.79),
}


def _stat(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  v = v[~np.isnan(v)]
  return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


def _rows(methods):
  for m in methods:
    yield NAMES[m], m, "final"
    if m.startswith("catenorm"):
      yield f"{NAMES[m]} (BN pass)", m, "bn_pass"


def summarise(runs: dict, methods: list, sites: list, seeds: list, class_names: dict) -> dict:
  """{"tables": {selection: {row: {site | "mean": (mean, std)}}}, "classes": {row:
  {class: (mean, std)}} (last model, class Dice averaged over sites, spread over seeds)}."""
  by = {(r["method"], r["seed"]): r for r in runs.values()}
  by_site = {}
  for r in runs.values():
    for site, scores in r["sites"].items():
      by_site[(r["method"], site, r["seed"])] = scores
  tables = {}
  for selection in SELECTIONS:
    rows = {}
    for row, method, output in _rows(methods):
      cells, per_seed_mean = {}, {s: [] for s in seeds}
      for site in sites:
        values = []
        for seed in seeds:
          scores = by_site.get((method, site, seed))
          if scores is None:
            continue
          value = 100.0 * scores[selection][output]["dice"]["mean"]
          values.append(value)
          per_seed_mean[seed].append(value)
        cells[site] = _stat(values)
      cells["mean"] = _stat([np.mean(v) for v in per_seed_mean.values() if v])
      rows[row] = cells
    tables[selection] = rows
  names = [class_names[k] for k in sorted(class_names)]
  classes = {}
  for row, method, output in _rows(methods):
    classes[row] = {}
    for name in names:
      per_seed = []
      for seed in seeds:
        vals = [by_site[(method, site, seed)]["last"][output]["dice"][name] * 100.0
                for site in sites if (method, site, seed) in by_site]
        if vals:
          per_seed.append(float(np.nanmean(vals)))
      classes[row][name] = _stat(per_seed)
  del by
  return {"tables": tables, "classes": classes}


def _cell(x) -> str:
  mean, std = x
  return "n/a" if np.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def tables_markdown(table: dict, c, label: str) -> str:
  sites = [s for s in next(iter(next(iter(table["tables"].values())).values())) if s != "mean"]
  mode = "single-domain (one network per site)" if c.mode == "single" else \
      "multi-domain (one network on all sites)"
  out = ["# CateNorm — Dice (%) per site", ""]
  if label:
    out += [f"**{label}**", ""]
  out += [f"{mode}; mean ± std over seeds {list(c.seeds)}; each cell is the class-averaged "
          "Dice of the site's test volumes. \"(BN pass)\" is the first pass of the same "
          "CateNorm network, without the second.", ""]
  if not c.stage2_from_scratch and any(m.startswith("catenorm") for m in c.methods):
    out += [f"CateNorm rows start from the BN run of the same site and seed (stage 1) and "
            f"train {c.train.iterations} more iterations: twice the baselines' "
            f"{c.train.iterations}"
            + ("; \"BN continued\" is the BN run trained on for the same iterations, the "
               "control of equal length." if "bn_continued" in c.methods else ".")
            , ""]
  for selection, title in SELECTIONS.items():
    out += [f"## {title}", "", "| method | " + " | ".join(sites) + " | mean |",
            "|---" * (len(sites) + 2) + "|"]
    for row, cells in table["tables"][selection].items():
      out.append(f"| {row} | " + " | ".join(_cell(cells[s]) for s in sites)
                 + f" | {_cell(cells['mean'])} |")
    out.append("")
  names = list(next(iter(table["classes"].values())))
  out += ["## per class (last model, averaged over sites)", "",
          "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for row, cells in table["classes"].items():
    out.append(f"| {row} | " + " | ".join(_cell(cells[n]) for n in names) + " |")
  out += ["", "Paper Table 1 (prostate, single-domain; ISBN-R / ISBN-B / I2CVB), for reference "
          "only: " + "; ".join(f"{k} {v[0]:.2f} / {v[1]:.2f} / {v[2]:.2f}"
                               for k, v in PAPER_PROSTATE.items()), ""]
  return "\n".join(out)
