"""PNG figures written into the workdir: learning curves and segmentation overlays."""

from __future__ import annotations

import pathlib

import numpy as np


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), imported at the first
  figure rather than with the module: 0.3 s a run's start need not pay."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def learning_curves(path, curves: dict[str, list[float]], title: str) -> None:
  plt = pyplot()
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
  plt = pyplot()
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


def transfer_figure(path, table: dict, budgets: list[str], columns: list[str],
                    title: str, ylabel: str = "surface Dice x100") -> None:
  """Target score and source retention against the target budget, one line per method,
  one row of panels per optimizer. `table[opt][budget][column][side] = (mean, std, n)`."""
  plt = pyplot()
  opts = list(table)
  fig, axes = plt.subplots(len(opts), 2, figsize=(10, 3.6 * len(opts)), squeeze=False)
  x = np.arange(len(budgets))
  for r, opt in enumerate(opts):
    for a, (side, name) in enumerate((("target", "target site"), ("source", "source site (retention)"))):
      ax = axes[r, a]
      for col in columns:
        mean = np.array([table[opt][b][col][side][0] for b in budgets])
        std = np.array([table[opt][b][col][side][1] for b in budgets])
        style = dict(ls="--", color="grey") if col == "none" else {}
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=col, **style)
      ax.set_xticks(x, budgets)
      ax.set_xlabel("target budget")
      ax.set_ylabel(ylabel)
      ax.set_title(f"{opt}: {name}")
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8, ncol=2)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)


def sample_grid(path, real: np.ndarray, synthetic: np.ndarray, title: str,
                rows: int = 6, cols: int = 6) -> None:
  """Two grids side by side: real images (left) and generated ones (right), in [0, 1]."""
  plt = pyplot()
  def grid(images):
    n = rows * cols
    images = np.asarray(images[:n], np.float32)
    if len(images) < n:
      images = np.concatenate([images, np.zeros((n - len(images),) + images.shape[1:])])
    h, w, c = images.shape[1:]
    tiled = images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h,
                                                                                  cols * w, c)
    return tiled[..., 0] if c == 1 else tiled

  fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
  for ax, images, name in zip(axes, (real, synthetic), ("real", "WGAN")):
    ax.imshow(grid(images), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name)
    ax.set_xticks([]), ax.set_yticks([])
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)


def ratio_figure(path, table: dict, targets: list[str], title: str) -> None:
  """Accuracy against the number of synthetic images, one panel per classifier: the source
  test set and every target, mean ± std over seeds. `table[clf][count][set] = (mean, std)`."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(table), figsize=(4.5 * len(table), 3.6), squeeze=False)
  for ax, (name, rows) in zip(axes[0], table.items()):
    counts = [int(k) for k in rows]
    for key, style in [("source", "-o")] + [(t, "--s") for t in targets]:
      mean = np.array([rows[str(k)][key][0] for k in counts])
      std = np.array([rows[str(k)][key][1] for k in counts])
      ax.errorbar(counts, mean, yerr=std, fmt=style, capsize=3,
                  label="source test" if key == "source" else f"target {key}")
    ax.set_xticks(counts, [f"{rows[str(k)]['label']}\n(+{k})" for k in counts], fontsize=8)
    ax.set_title(name)
    ax.set_xlabel("real : synthetic")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)


def image_rows(path, rows: dict[str, np.ndarray], title: str,
               value_range: tuple[float, float] = (0.0, 1.0)) -> None:
  """One row of images per entry (e.g. source, translated, reconstructed, target), each row
  titled by its key; images [n, H, W, C] in `value_range`."""
  plt = pyplot()
  lo, hi = value_range
  n = max(len(v) for v in rows.values())
  fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * n + 0.5, 1.35 * len(rows)), squeeze=False)
  for ax, (name, images) in zip(axes[:, 0], rows.items()):
    images = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    h, w, c = images.shape[1:]
    strip = np.ones((h, n * w, c), np.float32)
    for i, image in enumerate(images[:n]):
      strip[:, i * w:(i + 1) * w] = image
    ax.imshow(strip[..., 0] if c == 1 else strip, cmap="gray", vmin=0, vmax=1)
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(pathlib.Path(path), dpi=100)
  plt.close(fig)
