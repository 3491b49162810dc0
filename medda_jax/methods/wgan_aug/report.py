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


def row_ids(c) -> list[str]:
  """The table's rows: one per synthetic count ("25"), then one per mirrored count
  ("400+flips": real + 400 synthetic, the whole set doubled by horizontal flips)."""
  return ([str(k) for k in c.synthetic.counts]
          + [f"{k}+flips" for k in c.synthetic.mirror_counts])


def parse_row(row: str) -> tuple[int, bool]:
  """"400+flips" -> (400, True); "25" -> (25, False)."""
  count, _, flips = row.partition("+")
  return int(count), flips == "flips"


def _mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None]
  if not values:  # e.g. no source test set: no in-domain accuracy
    return float("nan"), float("nan")
  return float(np.mean(values)), float(np.std(values))


def summarise(results: dict, c, n_real: int) -> dict:
  """table[classifier][row] = {"source": (mean, std), target: (mean, std), "gap/<t>": ...};
  NaN where a run has no source test set."""
  table = {}
  for name in c.classifiers:
    rows = {}
    base = [results[f"{name}/0/{s}"]["source"] for s in c.seeds if f"{name}/0/{s}" in results]
    acc_in_real_only = _mean_std(base)[0]
    for row_id in row_ids(c):
      runs = [results[f"{name}/{row_id}/{s}"] for s in c.seeds
              if f"{name}/{row_id}/{s}" in results]
      if not runs:
        continue
      count, flips = parse_row(row_id)
      synthetic = runs[0].get("train_images", n_real + count) - n_real
      row = {"label": ratio_label(n_real, count) + (", all flipped" if flips else ""),
             "synthetic": synthetic, "runs": len(runs),
             "source": _mean_std([r["source"] for r in runs])}
      for target in c.data.targets:
        accs = [r["targets"][target] for r in runs]
        row[target] = _mean_std(accs)
        row[f"gap/{target}"] = _mean_std([domain_gap(acc_in_real_only, a) for a in accs])
        row[f"gap_row/{target}"] = _mean_std([
            None if r["source"] is None else domain_gap(r["source"], r["targets"][target])
            for r in runs])
        row[f"recall/{target}"] = {k: float(np.mean([r["target_recall"][target][k] for r in runs]))
                                   for k in runs[0]["target_recall"][target]}
      rows[row_id] = row
    table[name] = rows
  return table


def by_synthetic_count(table: dict) -> dict:
  """The table re-keyed by each row's synthetic image count (the figure's x axis)."""
  return {name: {str(row["synthetic"]): row
                 for row in sorted(rows.values(), key=lambda r: r["synthetic"])}
          for name, rows in table.items()}


def nan_to_none(value):
  """NaN -> None throughout (JSON has no NaN)."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [nan_to_none(v) for v in value]
  return value


def _cell(mean_std: tuple[float, float], with_std: bool = True) -> str:
  mean, std = mean_std
  if math.isnan(mean):
    return "—"
  return f"{mean:.1f} ± {std:.1f}" if with_std else f"{mean:.1f}"


def tables_markdown(table: dict, c, label: str, n_real: int, class_names,
                    n_val: int | None = None) -> str:
  val = f" + {n_val} validation images" if n_val else " (+ validation share)"
  out = ["# Class-wise WGAN augmentation: accuracy (%) against the synthetic share", "",
         f"**{label}**", "",
         f"{n_real} real training images{val}, mean ± std over seeds "
         f"{list(c.seeds)}. `gap` = real-only in-domain accuracy - out-of-domain accuracy "
         "(the paper's Table 5); `gap_row` uses the row's own in-domain accuracy; — where "
         "there is no source test set. Recall "
         f"per class: {class_names}.", ""]
  for name, rows in table.items():
    out += [f"## {name}", ""]
    head = ["ratio", "real + synthetic", "source test"]
    for t in c.data.targets:
      head += [f"{t}", f"gap {t}", f"gap_row {t}", f"recall {t}"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for row in rows.values():
      cells = [row["label"], f"{n_real} + {row['synthetic']}", _cell(row["source"])]
      for t in c.data.targets:
        recall = ", ".join(f"{class_names[int(k)]} {v:.0f}" for k, v in
                           sorted(row[f"recall/{t}"].items()))
        cells += [_cell(row[t]), _cell(row[f"gap/{t}"], False),
                  _cell(row[f"gap_row/{t}"], False), recall]
      out.append("| " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)
