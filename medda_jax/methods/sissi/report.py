"""SISSI's results table, shaped as the paper's Table 1: one row per pipeline, per reader
AP50, AP75, AP and AR (COCO, percent), mean +- std over seeds."""

from __future__ import annotations

import numpy as np

PIPELINES = ("baseline", "sissi_w", "sissi_s", "plain_a", "a_sissi_w", "a_sissi_s")
TITLES = {"baseline": "Baseline (mixed batch)", "sissi_w": "SISSI (W)",
          "sissi_s": "SISSI (S)", "plain_a": "Plain A (ADELE start, no synthetic)",
          "a_sissi_w": "A + SISSI (W)", "a_sissi_s": "A + SISSI (S)"}
METRICS = ("AP50", "AP75", "AP", "AR")
DEMO_LABEL = ("DEMO DATA (real IHC microscopy image, weak labels from classical generators; "
              "labelled source synthetic; reference = the generators' consensus on held-out "
              "tiles, not expert boxes) — not a reproduction of the paper's numbers")
SUBSTITUTION = ("detector: CenterNet-style anchor-free head on ResNet + FPN (the paper's "
                "Faster R-CNN substituted)")


def label_of(c, target_name: str) -> str:
  if c.data.target == "demo":
    return DEMO_LABEL
  source = "synthetic demo source" if c.data.source == "demo" else "Cellpose"
  return f"your target: {target_name}; labelled source: {source}"


def summarise(results: dict, c, readers) -> dict:
  """{reader: {pipeline: {metric: (mean, std, seeds)}}}."""
  table = {}
  for reader in readers:
    table[reader] = {}
    for p in c.sissi.pipelines:
      values = {m: [results[f"{p}/{s}"][reader][m] for s in c.seeds] for m in METRICS}
      table[reader][p] = {m: (float(np.mean(v)), float(np.std(v)), len(v))
                          for m, v in values.items()}
  return table


def table_markdown(table: dict, c, label: str) -> str:
  out = ["### Target test detection, COCO metrics x100 (paper Table 1 layout)", "",
         f"mean ± std over {len(c.seeds)} seeds; {SUBSTITUTION}; input {c.data.size} px, "
         f"{c.train.epochs} epochs. {label}", ""]
  for reader, rows in table.items():
    out += [f"reader: {reader}", "",
            "| pipeline | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for p, cell in rows.items():
      out.append(f"| {TITLES[p]} | " + " | ".join(f"{cell[m][0]:.1f} ± {cell[m][1]:.1f}"
                                                   for m in METRICS) + " |")
    out.append("")
  return "\n".join(out)
