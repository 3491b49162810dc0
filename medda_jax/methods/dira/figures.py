"""DiRA's figures: middle slices of pretext inputs and of the restorations of every stage
run with a decoder, the fine-tuned scores as bars with their spread over seeds, and the
scores against the share of training labels (the paper's Fig. 4)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from medda_jax import files, plots
from medda_jax.methods.dira import paper


def _middle(cubes: np.ndarray) -> np.ndarray:
  """[n, D, H, W, 1] -> the middle slice along the first axis, [n, H, W, 1]."""
  return cubes[:, cubes.shape[1] // 2]


def restorations(path, pre, pretrained: dict, c, test_images, title: str) -> None:
  """Per task: the cubes ([n, S, S, S, 1], a target's test crops), their pretext inputs, and
  each decoder-holding run's restoration."""
  cubes = test_images[..., 0]
  ids = np.arange(len(cubes))
  rows = {"original (middle slice)": _middle(test_images)}
  for task in c.tasks:
    batch = paper.make_batch(cubes, task, 0, ids, pre.table)
    rows[f"{task}: input"] = _middle(batch["image"])
    for (run_task, chain), params in pretrained.items():
      if run_task != task or chain[-1] == "D":
        continue
      model = pre.model(task, chain[-1])
      _, restored = jax.jit(model.apply)({"params": params}, batch["image"])
      rows[f"{task} {'→'.join(chain)}: restored"] = _middle(np.asarray(restored))
  plots.image_rows(path, rows, title)


def transfer_bars(path, table: dict, c, title: str) -> None:
  """One panel per target, one bar per initialisation."""
  plt = plots.pyplot()
  inits = list(table)
  targets = list(c.targets)
  fig, axes = plt.subplots(1, len(targets), figsize=(1.5 + 0.45 * len(inits) * len(targets),
                                                     3.6), squeeze=False)
  for ax, target in zip(axes[0], targets):
    mean = [table[i][target][0] for i in inits]
    std = [table[i][target][1] for i in inits]
    ax.bar(np.arange(len(inits)), mean, yerr=std, capsize=2,
           color=["0.6"] + [f"C{k % 10}" for k in range(len(inits) - 1)])
    ax.set_xticks(np.arange(len(inits)), inits, rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(target)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with files.atomic_path(pathlib.Path(path)) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)


def efficiency_curves(path, curves: dict, kinds: dict, title: str) -> None:
  """One panel per target: each initialisation's mean score (± std band) against the share
  of the target's training labels."""
  plt = plots.pyplot()
  from medda_jax.methods.dira.report import METRIC

  targets = list(curves)
  fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), squeeze=False)
  for ax, target in zip(axes[0], targets):
    for k, (init, points) in enumerate(curves[target].items()):
      x, mean, std = (np.array(v) for v in zip(*points))
      color = "0.4" if k == 0 else f"C{(k - 1) % 10}"
      ax.plot(100 * x, mean, marker="o", color=color, label=init)
      ax.fill_between(100 * x, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("training labels (%)")
    ax.set_ylabel(METRIC[kinds[target]].upper())
    ax.set_title(target)
  axes[0][-1].legend(fontsize=6, loc="lower right")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with files.atomic_path(pathlib.Path(path)) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
