"""DiRA's table in the shape of the paper's Table 1: rows are (pretext task, strategy) and
random weights, columns the targets (AUC for classification, IoU for segmentation), cells
mean ± std over the fine-tuning seeds."""

from __future__ import annotations

import numpy as np

from medda_jax.methods.dira.pretrain import run_name

METRIC = {"classification": "auc", "segmentation": "iou"}


def pretrain_key(task: str, chain: tuple[str, ...]) -> str:
  return f"pretrain/{run_name(task, chain)}"


def finetune_key(init: str, target: str, seed: int) -> str:
  return f"{init}/{target}/seed{seed}"


def summarise(runs: dict, c, inits: list[str]) -> dict:
  """{init: {target: (mean, std, seeds)}} of the test score (population std)."""
  table: dict = {}
  for init in inits:
    for target in c.targets:
      scores = [runs[finetune_key(init, target, s)]["test"] for s in c.seeds]
      table.setdefault(init, {})[target] = (float(np.mean(scores)), float(np.std(scores)),
                                            len(scores))
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
