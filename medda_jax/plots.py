"""PNG figures written into the workdir: learning curves and segmentation overlays."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(path, curves: dict[str, list[float]], title: str) -> None:
  curves = {k: v for k, v in curves.items() if v}
  if not curves:
    return
  fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
  for ax, (name, values) in zip(axes[0], curves.items()):
    values = np.asarray(values)
    ax.plot(np.arange(1, len(values) + 1), values, lw=0.8, alpha=0.5)
    if len(values) >= 5:
      k = max(1, len(values) // 20)
      ax.plot(np.arange(k, len(values) + 1), np.convolve(values, np.ones(k) / k, "valid"), lw=2)
    ax.set_title(name)
    ax.set_xlabel("call" if name == "transfer" else "meta-iteration")
    ax.set_ylabel("loss")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)


def overlays(path, images, masks, logits_by_init: dict[str, np.ndarray], title: str,
             num: int = 4) -> None:
  """Rows: test slices; columns: ground truth then each initialisation's prediction."""
  n = min(num, len(images))
  picks = np.linspace(0, len(images) - 1, n).astype(int)
  cols = 1 + len(logits_by_init)
  fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
  for r, i in enumerate(picks):
    panels = [("ground truth", masks[i, ..., 0] > 0.5)]
    panels += [(name, logits[i, ..., 0] > 0) for name, logits in logits_by_init.items()]
    for c, (name, mask) in enumerate(panels):
      ax = axes[r, c]
      ax.imshow(images[i, ..., 0], cmap="gray")
      ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)
