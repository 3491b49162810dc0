"""DiRA's table in the shape of the paper's Table 1: rows are (pretext task, strategy) and
random weights, columns the targets (AUC for classification, IoU for segmentation), cells
mean ± std over the fine-tuning seeds; and, with `transfer.label_fractions`, the scores
against the share of the target's training labels (the paper's Fig. 4)."""

from __future__ import annotations

import numpy as np

from medda_jax.methods.dira.pretrain import run_name

METRIC = {"classification": "auc", "segmentation": "iou"}


def pretrain_key(task: str, chain: tuple[str, ...]) -> str:
  return f"pretrain/{run_name(task, chain)}"


def finetune_key(init: str, target: str, seed: int, fraction: float = 1.0) -> str:
  """e.g. random/ncc/seed0, or random/ncc/25%/seed0 on a quarter of the training labels."""
  if fraction == 1.0:
    return f"{init}/{target}/seed{seed}"
  return f"{init}/{target}/{fraction:.0%}/seed{seed}"


def _spread(runs: dict, init: str, target: str, seeds, fraction: float = 1.0):
  """(mean, population std) of the test score over the seeds."""
  scores = [runs[finetune_key(init, target, s, fraction)]["test"] for s in seeds]
  return float(np.mean(scores)), float(np.std(scores))


def efficiency(runs: dict, c, inits: list[str]) -> dict:
  """{target: {init: [(fraction, mean, std), ...]}} over `transfer.label_fractions`."""
  out: dict = {}
  for target in c.targets:
    for init in inits:
      points = []
      for fraction in sorted(c.transfer.label_fractions):
        points.append((float(fraction), *_spread(runs, init, target, c.seeds, fraction)))
      out.setdefault(target, {})[init] = points
  return out


def efficiency_markdown(curves: dict, c, kinds: dict[str, str]) -> str:
  """One table per target: rows the initialisations, columns the label fractions."""
  fractions = sorted(c.transfer.label_fractions)
  out = ["### Test scores against the share of the target's training labels (paper Fig. 4 "
         "shape)", "", f"mean ± std over {len(c.seeds)} fine-tuning seeds; each share a "
         "seeded subset of the training crops (stratified by class for classification), the "
         "same for every initialisation.", ""]
  for target, rows in curves.items():
    out += [f"**{target}** ({METRIC[kinds[target]].upper()})", "",
            "| initialisation | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions)]
    for init, points in rows.items():
      out.append(f"| {init} | " + " | ".join(f"{m:.4f} ± {sd:.4f}" for _, m, sd in points)
                 + " |")
    out.append("")
  return "\n".join(out)


def summarise(runs: dict, c, inits: list[str]) -> dict:
  """{init: {target: (mean, std, seeds)}} of the test score (population std)."""
  table: dict = {}
  for init in inits:
    for target in c.targets:
      table.setdefault(init, {})[target] = (*_spread(runs, init, target, c.seeds),
                                            len(c.seeds))
  return table


def tables_markdown(table: dict, c, label: str, kinds: dict[str, str]) -> str:
  """`kinds`: each target's kind, "classification" or "segmentation"."""
  targets = list(c.targets)
  heads = [f"{t} ({METRIC[kinds[t]].upper()})" for t in targets]
  best = {t: max(cells[t][0] for cells in table.values()) for t in targets}
  out = [f"**{label}**", "",
         "### Test scores per initialisation (paper Table 1 shape; D, (D)+R, ((D)+R)+A are "
         "the stepwise strategies, D+R+A all three from scratch)", "",
         f"mean ± std over {len(c.seeds)} fine-tuning seeds; every layer fine-tuned. "
         "Classification: the pre-trained encoder under a new head. Segmentation: encoder + "
         "decoder with a new output layer, the decoder pre-trained where the strategy "
         "trained one.", "",
         "| initialisation | " + " | ".join(heads) + " |",
         "|---|" + "---|" * len(targets)]
  for init, cells in table.items():
    out.append(f"| {init} | " + " | ".join(
        (f"**{cells[t][0]:.4f}**" if cells[t][0] == best[t] else f"{cells[t][0]:.4f}")
        + f" ± {cells[t][1]:.4f}" for t in targets) + " |")
  out.append("")
  return "\n".join(out)
