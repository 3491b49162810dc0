"""The ODEx pool over the stream: which model trained on each stage (and where the pool
expanded), and after the last stage the share of each stage's test images routed to each
model."""

from __future__ import annotations

import io
import pathlib

import numpy as np

from medda_jax import files, plots


def pool_figure(path, run: dict, stages, title: str) -> None:
  plt = plots.pyplot()
  routed = np.asarray(run["routing"][-1], float)  # [test stage, model]
  share = routed / np.maximum(routed.sum(axis=1, keepdims=True), 1)
  models = share.shape[1]
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(stages), 1.5 + 0.6 * models))
  im = ax.imshow(share.T, cmap="Blues", vmin=0, vmax=1, aspect="auto")
  for k, (m, expanded) in enumerate(zip(run["trained"], run["expanded"])):
    ax.plot(k, m, marker="*" if expanded else "o", color="tab:red", ms=12 if expanded else 8)
  for j in range(len(stages)):
    for m in range(models):
      ax.text(j, m, f"{share[j, m]:.0%}", ha="center", va="bottom", fontsize=7)
  ax.set_xticks(range(len(stages)), stages)
  ax.set_yticks(range(models), [f"model {m}" for m in range(models)])
  ax.set_xlabel("stage (marker: model trained on it; star: expansion)")
  ax.set_title(f"{title}\ncolour: share of the stage's test images routed to the model",
               fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.04)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  files.write_bytes(pathlib.Path(path), buffer.getvalue())
