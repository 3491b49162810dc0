"""Per-group AUC bars: one group of bars per skin-type group (and OOD domain), one bar per
method, mean +- std over seeds."""

from __future__ import annotations

import io
import pathlib

import numpy as np

from medda_jax import files, plots
from medda_jax.methods.melanoma_fairness.paper import TITLES
from medda_jax.methods.melanoma_fairness.report import columns


def group_auc_figure(path, table: dict, c, title: str) -> None:
  plt = plots.pyplot()
  cols = [col for col in columns(c) if col != "gap"]
  methods = list(table)
  width = 0.8 / max(len(methods), 1)
  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 3.8))
  x = np.arange(len(cols))
  for k, m in enumerate(methods):
    means = [table[m][col][0] for col in cols]
    stds = [table[m][col][1] for col in cols]
    ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
           label=TITLES[m])
  ax.set_xticks(x, cols, fontsize=8)
  ax.set_ylabel("AUC")
  ax.set_ylim(0.4, 1.0)
  ax.axhline(0.5, color="k", lw=0.5)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, ncol=len(methods), loc="upper center")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  files.write_bytes(pathlib.Path(path), buffer.getvalue())
