"""Detections before / after self-training: the first test images of the first reader with
the reference boxes and the first seed's detections of the baseline and of each
self-training pipeline."""

from __future__ import annotations

import io

import numpy as np

from medda_jax import files, plots
from medda_jax.methods.sissi.report import TITLES


def before_after(path, reader_set, runs: dict, c, title: str, images: int = 2) -> None:
  plt = plots.pyplot()
  from matplotlib.patches import Rectangle

  seed = c.seeds[0]
  pipelines = [p for p in c.sissi.pipelines if f"{p}/{seed}" in runs]
  n = min(images, len(reader_set))
  fig, axes = plt.subplots(n, 1 + len(pipelines), figsize=(2.6 * (1 + len(pipelines)), 2.6 * n),
                           squeeze=False)
  for i in range(n):
    image = reader_set.image(i)
    panels = [("reference", reader_set.boxes[i], "lime")]
    for p in pipelines:
      ex = runs[f"{p}/{seed}"]["examples"]
      boxes = np.array(ex[i]["boxes"]).reshape(-1, 4) if i < len(ex) else np.zeros((0, 4))
      panels.append((TITLES[p], boxes, "red"))
    for ax, (name, boxes, colour) in zip(axes[i], panels):
      ax.imshow(image)
      for x1, y1, x2, y2 in boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=0.8))
      ax.set_axis_off()
      if i == 0:
        ax.set_title(name, fontsize=7)
  fig.suptitle(title, fontsize=8)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  files.write_bytes(path, buf.getvalue())
