"""The benchmark's table in the shape of the paper's Tables 1 and 2: rows are (initialisation,
backbone), columns the targets, cells the test mean AUC over labels, mean ± std over the
fine-tuning seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Paper:
  """The method a study's tables belong to, and which of its paper's tables they mirror."""
  method: str
  tables: str


SIMMIM = Paper("SimMIM", "paper Tables 1-2 shape")

# Ma et al., Table 1 (AUC %, mean of 10 runs), for the reader's comparison only.
PAPER_TABLE_1 = {
    ("scratch", "vit"): {"chestxray14": 71.69, "chexpert": 80.78},
    ("scratch", "swin"): {"chestxray14": 77.04, "chexpert": 83.39},
    ("SimMIM ImageNet", "vit"): {"chestxray14": 79.55, "chexpert": 88.07},
    ("SimMIM ImageNet", "swin"): {"chestxray14": 81.95, "chexpert": 88.16},
}


def pretrain_key(backbone: str, name: str) -> str:
  return f"pretrain/{backbone}/{name}"


def finetune_key(backbone: str, init: str, target: str, seed: int) -> str:
  return f"{backbone}/{init}/{target}/seed{seed}"


def summarise(runs: dict, c, inits: dict[str, list[str]]) -> dict:
  """{backbone: {init: {target: (mean, std, seeds)}}} of the test mean AUC (population
  std over seeds); `inits` lists each backbone's initialisations."""
  table: dict = {}
  for backbone in c.backbones:
    for init in inits[backbone]:
      for target in c.transfer.targets:
        aucs = [runs[finetune_key(backbone, init, target, s)]["test_auc"] for s in c.seeds]
        table.setdefault(backbone, {}).setdefault(init, {})[target] = (
            float(np.mean(aucs)), float(np.std(aucs)), len(aucs))
  return table


def tables_markdown(table: dict, c, label: str, paper: Paper = SIMMIM,
                    task_labels: dict[str, str] | None = None) -> str:
  targets = list(c.transfer.targets)
  task_labels = task_labels or {}

  def run_text(run) -> str:
    name, corpus, start = run[:3]
    task = run[3] if len(run) == 4 else c.method
    return (f"{name} = {task_labels.get(task, task)} on corpus {corpus}"
            + (f", continued from {start}" if start else ", from random weights"))

  out = [f"**{label}**", "",
         "Pre-training runs: " + "; ".join(run_text(r) for r in c.pretrain.runs) + ".", "",
         f"### Test mean AUC over labels ({paper.tables})", "",
         f"mean ± std over {len(c.seeds)} fine-tuning seeds; every layer fine-tuned under a new "
         f"head. {label}", "",
         "| initialisation | backbone | " + " | ".join(targets) + " |",
         "|---|---|" + "---|" * len(targets)]
  for backbone, rows in table.items():
    for init, cells in rows.items():
      best = {t: max(table[backbone][i][t][0] for i in rows) for t in targets}
      out.append(f"| {init} | {backbone} | " + " | ".join(
          (f"**{cells[t][0]:.4f}**" if cells[t][0] == best[t] else f"{cells[t][0]:.4f}")
          + f" ± {cells[t][1]:.4f}" for t in targets) + " |")
  out.append("")
  return "\n".join(out)
