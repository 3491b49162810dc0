"""The predictions of every normalisation on the same test slices (first site, first
seed, last model): image, ground truth, each method's output and, for CateNorm, its BN
pass."""

from __future__ import annotations

import pathlib

import numpy as np

from medda_jax import files, plots
from medda_jax.methods.catenorm.report import NAMES

SLICES = 3  # the slices with the most foreground


def _dir(workdir) -> pathlib.Path:
  path = pathlib.Path(workdir) / "figures"
  path.mkdir(parents=True, exist_ok=True)
  return path


def save_prediction(workdir, method: str, volume, bn: np.ndarray, final: np.ndarray) -> None:
  """Keeps the figure's slices of a run's prediction (made before the run is recorded, so
  a resumed sweep draws the same figure)."""
  mask = np.asarray(volume.mask)
  fg = (mask > 0).reshape(len(mask), -1).sum(1)
  picks = np.sort(np.argsort(-fg, kind="stable")[:SLICES])
  with files.atomic_path(_dir(workdir) / f"{method}.npz") as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, image=np.asarray(volume.image)[picks], label=mask[picks],
                          bn=bn[picks], final=final[picks])


def prediction_figure(workdir, methods: list, class_names: dict, site: str, demo: bool) -> None:
  plt = plots.pyplot()
  runs = {m: np.load(_dir(workdir) / f"{m}.npz") for m in methods
          if (_dir(workdir) / f"{m}.npz").exists()}
  if not runs:
    return
  first = next(iter(runs.values()))
  panels = [("image", None), ("ground truth", first["label"])]
  for m, r in runs.items():
    panels.append((NAMES[m], r["final"]))
    if m.startswith("catenorm"):
      panels.append((f"{NAMES[m]}\n(BN pass)", r["bn"]))
  n_cls = max(class_names) + 1
  cmap = plt.get_cmap("tab10", max(n_cls, 2))
  rows = len(first["image"])
  fig, axes = plt.subplots(rows, len(panels), figsize=(1.9 * len(panels), 1.9 * rows + 0.6),
                           squeeze=False)
  for r in range(rows):
    for col, (title, labels) in enumerate(panels):
      ax = axes[r, col]
      ax.imshow(first["image"][r], cmap="gray")
      if labels is not None:
        overlay = np.ma.masked_where(labels[r] == 0, labels[r])
        ax.imshow(overlay, cmap=cmap, vmin=0, vmax=max(n_cls - 1, 1), alpha=0.6,
                  interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=8)
  legend = ", ".join(f"{k}={v}" for k, v in sorted(class_names.items()))
  fig.suptitle(f"site {site}: {legend}" + (" — DEMO DATA" if demo else ""), fontsize=9)
  fig.tight_layout()
  with files.atomic_path(pathlib.Path(workdir) / "predictions.png") as tmp:
    fig.savefig(tmp, format="png", dpi=90)
  plt.close(fig)
