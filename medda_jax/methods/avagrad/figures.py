"""Fig. 2's shape: mean |Δw| per weight and step of each layer group (context, transpose,
localization, segmentation), per epoch, one panel per optimiser-budget run (mean over seeds)."""

from __future__ import annotations

import pathlib

import numpy as np

from medda_jax import files, plots
from medda_jax.methods.avagrad import paper
from medda_jax.methods.avagrad.report import run_key


def update_sizes_figure(path, runs: dict, c, title: str) -> None:
  plt = plots.pyplot()
  columns = [r[0] for r in c.runs]
  fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), squeeze=False,
                           sharey=True)
  for ax, column in zip(axes[0], columns):
    curves = [paper.group_update_sizes(runs[run_key(column, s)]["update_sizes"])
              for s in c.seeds]
    for group in curves[0]:
      mean = np.mean([cv[group] for cv in curves], axis=0)
      ax.plot(np.arange(1, len(mean) + 1), mean, marker="." if len(mean) < 30 else None,
              label=group)
    ax.set_yscale("log")
    ax.set_title(column)
    ax.set_xlabel("epoch")
  axes[0][0].set_ylabel("mean |Δw| per step")
  axes[0][-1].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  with files.atomic_path(pathlib.Path(path)) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
