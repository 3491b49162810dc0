"""The result tables of the WGAN augmentation experiment: accuracy and domain gap per
classifier and synthetic count, mean and std over seeds.
"""

from __future__ import annotations

import math

import numpy as np

from medda_jax.methods.wgan_aug.paper import domain_gap


def ratio_label(real: int, synth: int) -> str:
  if synth == 0:
    return "real only"
  g = math.gcd(real, synth)
  return f"{real // g}:{synth // g}"


def summarise(results: dict, c, n_real: int) -> dict:
  """table[classifier][count] = {"source": (mean, std), target: (mean, std), "gap/<t>": ...}."""
  table = {}
  for name in c.classifiers:
    rows = {}
    base = [results[f"{name}/0/{s}"]["source"] for s in c.seeds if f"{name}/0/{s}" in results]
    acc_in_real_only = float(np.mean(base)) if base else float("nan")
    for count in c.synthetic.counts:
      runs = [results[f"{name}/{count}/{s}"] for s in c.seeds if f"{name}/{count}/{s}" in results]
      if not runs:
        continue
      ms = lambda v: (float(np.mean(v)), float(np.std(v)))
      row = {"label": ratio_label(n_real, count), "synthetic": count, "runs": len(runs),
             "source": ms([r["source"] for r in runs])}
      for target in c.data.targets:
        accs = [r["targets"][target] for r in runs]
        row[target] = ms(accs)
        row[f"gap/{target}"] = ms([domain_gap(acc_in_real_only, a) for a in accs])
        row[f"gap_row/{target}"] = ms([domain_gap(r["source"], r["targets"][target])
                                       for r in runs])
        row[f"recall/{target}"] = {k: float(np.mean([r["target_recall"][target][k] for r in runs]))
                                   for k in runs[0]["target_recall"][target]}
      rows[str(count)] = row
    table[name] = rows
  return table


def tables_markdown(table: dict, c, label: str, n_real: int, class_names) -> str:
  out = ["# Class-wise WGAN augmentation: accuracy (%) against the synthetic share", "",
         f"**{label}**", "",
         f"{n_real} real training images (+ validation share), mean ± std over seeds "
         f"{list(c.seeds)}. `gap` = real-only in-domain accuracy - out-of-domain accuracy "
         "(the paper's Table 5); `gap_row` uses the row's own in-domain accuracy. Recall "
         f"per class: {class_names}.", ""]
  for name, rows in table.items():
    out += [f"## {name}", ""]
    head = ["ratio", "real + synthetic", "source test"]
    for t in c.data.targets:
      head += [f"{t}", f"gap {t}", f"gap_row {t}", f"recall {t}"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for row in rows.values():
      cells = [row["label"], f"{n_real} + {row['synthetic']}",
               f"{row['source'][0]:.1f} ± {row['source'][1]:.1f}"]
      for t in c.data.targets:
        recall = ", ".join(f"{class_names[int(k)]} {v:.0f}" for k, v in
                           sorted(row[f"recall/{t}"].items()))
        cells += [f"{row[t][0]:.1f} ± {row[t][1]:.1f}", f"{row[f'gap/{t}'][0]:.1f}",
                  f"{row[f'gap_row/{t}'][0]:.1f}", recall]
      out.append("| " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)
