"""The seed's Table 1 from the runs: per direction and method, Dice (%) and ASSD (voxels)
per class and their class average, mean +- std over the target's test volumes (each
volume's score first averaged over the seeds), and SynthMix against SIFA by a two-sided
t-test over volumes."""

from __future__ import annotations

import numpy as np

from medda_jax import metrics


def _nanmean(values) -> float:
  """Mean of the defined values; NaN when none is."""
  v = np.asarray(values, np.float64)
  v = v[~np.isnan(v)]
  return float(v.mean()) if len(v) else float("nan")

# Seed Tables 1-2 (MM-WHS; AA / LAC / LVC / MYO / mean), for comparison only.
PAPER = {
    ("mr", "ct"): {"sifa": {"dice": (81.3, 79.5, 73.8, 61.6, 74.1), "assd": (7.9, 6.2, 5.5, 8.5, 7.0)},
                   "synthmix": {"dice": (87.2, 88.5, 82.4, 71.8, 82.5),
                                "assd": (5.4, 3.2, 3.3, 3.5, 3.8)}},
    ("ct", "mr"): {"sifa": {"dice": (65.3, 62.3, 78.9, 47.3, 63.4), "assd": (7.3, 7.4, 3.8, 4.4, 5.7)},
                   "synthmix": {"dice": (70.0, 68.7, 83.0, 48.3, 67.5),
                                "assd": (5.9, 5.1, 3.3, 4.1, 4.6)}},
}
PAPER_ORDER = ("AA", "LAC", "LVC", "MYO")
NAMES = {"sifa": "SIFA", "synthmix": "SIFA + SynthMix"}


def _classes(class_names: dict) -> list[str]:
  names = list(class_names.values())
  return [n for n in PAPER_ORDER if n in names] if set(PAPER_ORDER) <= set(names) else names


def volume_scores(runs: dict, src: str, trg: str, method: str, seeds: list) -> dict:
  """{volume: {class: {"dice", "assd"}}}, each averaged over the seeds where it is defined
  (NaN when it is in none: Dice with the class in neither the ground truth nor the
  prediction, ASSD with it missing from either)."""
  chosen = [r for r in runs.values()
            if (r["source"], r["target"], r["method"]) == (src, trg, method)
            and r["seed"] in seeds]
  out = {}
  for vol in chosen[0]["volumes"]:
    out[vol] = {}
    for cls in chosen[0]["volumes"][vol]:
      out[vol][cls] = {m: _nanmean([r["volumes"][vol][cls][m] for r in chosen])
                       for m in ("dice", "assd")}
  return out


def summarise(runs: dict, directions, methods: list, seeds: list, class_names: dict) -> dict:
  rows, tests = [], []
  for src, trg in directions:
    classes = _classes(class_names[trg])
    by_method = {}
    for method in methods:
      per_volume = volume_scores(runs, src, trg, method, seeds)
      cells = {}
      for cls in classes:
        for m in ("dice", "assd"):
          v = np.array([per_volume[vol][cls][m] for vol in per_volume], np.float64)
          ok = v[~np.isnan(v)]
          cells.setdefault(cls, {})[m] = {
              "mean": float(ok.mean()) if len(ok) else float("nan"),
              "std": float(ok.std()) if len(ok) else float("nan"),
              "undefined": int(np.isnan(v).sum())}
      mean = {m: _nanmean([cells[k][m]["mean"] for k in classes]) for m in ("dice", "assd")}
      per_seed = {}
      for seed in seeds:
        r = [r for r in runs.values() if (r["source"], r["target"], r["method"], r["seed"])
             == (src, trg, method, seed)][0]
        per_seed[seed] = _nanmean([r["volumes"][vol][k]["dice"] for vol in r["volumes"]
                                   for k in classes])
      volume_mean = {vol: {m: _nanmean([per_volume[vol][k][m] for k in classes])
                           for m in ("dice", "assd")} for vol in per_volume}
      by_method[method] = volume_mean
      rows.append({"direction": f"{src}->{trg}", "method": method, "classes": classes,
                   "cells": cells, "mean": mean, "per_seed_dice": per_seed,
                   "volumes": len(per_volume)})
    if {"sifa", "synthmix"} <= set(methods):
      test = {"direction": f"{src}->{trg}"}
      for m in ("dice", "assd"):
        a = [by_method["synthmix"][v][m] for v in by_method["synthmix"]]
        b = [by_method["sifa"][v][m] for v in by_method["sifa"]]
        test[m] = metrics.ttest_volumes(a, b)
      tests.append(test)
  return {"rows": rows, "tests": tests}


def _pm(cell: dict, scale: float) -> str:
  if np.isnan(cell["mean"]):
    return "n/a"
  out = f"{scale * cell['mean']:.1f} ± {scale * cell['std']:.1f}"
  return out + (f" ({cell['undefined']} n/a)" if cell.get("undefined") else "")


def tables_markdown(c, label: str, data_desc: str, summary: dict) -> str:
  lines = [f"# SIFA and SIFA + SynthMix — {label}", "", f"Data: {data_desc}.", "",
           f"Per class: mean ± std over the target's test volumes of each volume's score "
           f"averaged over {len(c.seeds)} seeds {list(c.seeds)}; Dice in %, ASSD in voxels "
           "(medpy's definition, no spacing). A score that is undefined for a volume (ASSD with "
           "an empty prediction or ground truth, Dice with the class in neither) is left out "
           "of the mean and counted as 'n/a'.", ""]
  for metric, scale, unit in (("dice", 100.0, "Dice (%)"), ("assd", 1.0, "ASSD (voxels)")):
    lines += [f"## {unit}", ""]
    directions = list(dict.fromkeys(r["direction"] for r in summary["rows"]))
    for d in directions:
      rows = [r for r in summary["rows"] if r["direction"] == d]
      classes = rows[0]["classes"]
      head = ["method"] + classes + ["mean"]
      lines += [f"{d}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      for r in rows:
        cells = [_pm(r["cells"][k][metric], scale) for k in classes]
        lines.append(f"| {NAMES[r['method']]} | " + " | ".join(cells)
                     + f" | {scale * r['mean'][metric]:.1f} |")
      lines.append("")
  for t in summary["tests"]:
    lines.append(f"SynthMix vs SIFA, {t['direction']}, two-sided t-test over volumes: mean "
                 f"Dice t = {t['dice']['t']:.2f}, p = {t['dice']['p']:.3g}; mean ASSD "
                 f"t = {t['assd']['t']:.2f}, p = {t['assd']['p']:.3g}.")
  for r in summary["rows"]:
    lines.append(f"Mean Dice per seed, {r['direction']} {NAMES[r['method']]}: " + ", ".join(
        f"seed {s}: {100 * v:.1f}" for s, v in r["per_seed_dice"].items()) + ".")
  lines += ["", "Seed Tables 1-2 (MM-WHS, for comparison only; AA / LAC / LVC / MYO / mean):",
            "", "| direction | method | Dice (%) | ASSD |", "|---|---|---|---|"]
  for (src, trg), by_method in PAPER.items():
    for method, v in by_method.items():
      lines.append(f"| {src}->{trg} | {NAMES[method]} | "
                   + " / ".join(f"{x:.1f}" for x in v["dice"]) + " | "
                   + " / ".join(f"{x:.1f}" for x in v["assd"]) + " |")
  s, m = c.sifa, c.synthmix
  lines += ["", f"Settings: {s.iterations} iterations at batch {s.batch_size}, "
            f"{c.data.image_size} px, G ngf {s.ngf} with {s.n_blocks} blocks, encoder width "
            f"{s.encoder_features}, decoder {s.decoder_blocks} blocks (dropout "
            f"{s.decoder_dropout}), D ndf {s.ndf}, pool {s.pool_size} batches, Adam "
            f"{s.learning_rate} (segmentation {s.seg_learning_rate}); SynthMix k "
            f"{m.mask_k}, ratio {m.mask_ratio}, lambda_I {m.lambda_inspector}. The full "
            "config is in results.json.", ""]
  return "\n".join(lines)
