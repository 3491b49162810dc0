"""SimMIM's figures: masked inputs and reconstructions per pre-training run, and the
fine-tuned AUC of every initialisation as bars with their spread over seeds."""

from __future__ import annotations

import pathlib

import numpy as np

from medda_jax import files, plots


def reconstructions(path, rows: dict[str, np.ndarray], title: str) -> None:
  """One row per entry: the inputs, then each run's masked inputs and reconstructions."""
  plots.image_rows(path, rows, title)


def transfer_bars(path, table: dict, title: str) -> None:
  """Grouped bars: one panel per target, one group per backbone, one bar per init."""
  plt = plots.pyplot()
  backbones = list(table)
  inits = list(table[backbones[0]])
  targets = list(table[backbones[0]][inits[0]])
  fig, axes = plt.subplots(1, len(targets), figsize=(1.2 + 2.2 * len(backbones) * len(targets),
                                                     3.4), squeeze=False)
  width = 0.8 / len(inits)
  for ax, target in zip(axes[0], targets):
    for k, init in enumerate(inits):
      mean = [table[b][init][target][0] for b in backbones]
      std = [table[b][init][target][1] for b in backbones]
      ax.bar(np.arange(len(backbones)) + (k - (len(inits) - 1) / 2) * width, mean, width,
             yerr=std, capsize=2, label=init)
    ax.set_xticks(np.arange(len(backbones)), backbones)
    ax.set_ylim(0.4, 1.0)
    ax.set_title(target)
    ax.set_ylabel("test mean AUC")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with files.atomic_path(pathlib.Path(path)) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
