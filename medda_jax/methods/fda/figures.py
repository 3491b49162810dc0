"""FDA's figures: one target slice restyled at every beta of the grid (with the donor and
the swap window), and the validation sDice against beta for every method."""

from __future__ import annotations

import pathlib

import numpy as np

from medda_jax import plots
from medda_jax.methods.fda import paper, report


def restyled_slices(path, target: np.ndarray, donor: np.ndarray, betas, window: str,
                    title: str) -> None:
  """Top: target, donor, then the target restyled at each beta; bottom: the window."""
  plt = plots.pyplot()
  h, w = target.shape
  cols = 2 + len(betas)
  fig, axes = plt.subplots(2, cols, figsize=(2.0 * cols, 4.3), squeeze=False)
  axes[0, 0].imshow(target, cmap="gray", vmin=0, vmax=1)
  axes[0, 0].set_title("target", fontsize=8)
  axes[0, 1].imshow(donor, cmap="gray", vmin=0, vmax=1)
  axes[0, 1].set_title("donor (source)", fontsize=8)
  for j, beta in enumerate(betas):
    out = np.asarray(paper.fda_swap(donor, target, beta, window))
    axes[0, 2 + j].imshow(out, cmap="gray", vmin=0, vmax=1)
    axes[0, 2 + j].set_title(f"β = {beta:g}", fontsize=8)
    axes[1, 2 + j].imshow(np.asarray(paper.window_mask(window, h, w, beta)), cmap="gray",
                          vmin=0, vmax=1)
    axes[1, 2 + j].set_title(f"window r = {beta * min(h, w):.1f} px", fontsize=8)
  for ax in axes.flat:
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)


def beta_curve(path, runs: dict, c, demo: bool) -> None:
  """Validation sDice against beta, mean over pairs and seeds, one line per method, with
  the unadapted model as a dashed line."""
  plt = plots.pyplot()
  pairs = [tuple(p) for p in c.data.pairs]
  betas = list(c.fda.betas)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for m in c.fda.methods:
    curves = np.array([[runs[report.val_key(s, t, seed)]["sdice"][m] for s, t in pairs]
                       for seed in c.seeds])  # [seeds, pairs, betas]
    per_seed = curves.mean(axis=1)
    ax.errorbar(betas, per_seed.mean(axis=0), yerr=per_seed.std(axis=0), marker="o",
                capsize=3, label=report.TITLES[m])
  no_da = np.mean([runs[report.val_key(s, t, seed)]["no_da"] for s, t in pairs
                   for seed in c.seeds])
  ax.axhline(no_da, color="k", ls="--", lw=1, label="no DA")
  ax.set_xlabel("β (window radius / slice side)")
  ax.set_ylabel("validation surface Dice")
  ax.set_title("β sweep on target validation scans" + (" (demo data)" if demo else ""),
               fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)
