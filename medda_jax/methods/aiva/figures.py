"""The t-SNE embedding of AIVA's last clustering period: source and target slices coloured
by cluster (circles / crosses), cluster centres, and a line for every Hungarian pair."""

from __future__ import annotations

import io
import pathlib

import numpy as np

from medda_jax import files, plots


def embedding_figure(path, embedding_file, title: str) -> None:
  plt = plots.pyplot()
  with np.load(embedding_file) as f:
    y, s_ids, t_ids = f["embedding"], f["source_ids"], f["target_ids"]
    matching, sc, tc = f["matching"], f["source_centres"], f["target_centres"]
    period = int(f["period"])
  ns = len(s_ids)
  k = len(matching)
  cmap = plt.get_cmap("tab20", max(k, 2))
  fig, ax = plt.subplots(figsize=(6.5, 6))
  # a target cluster takes the colour of the source cluster it is matched with
  ax.scatter(y[:ns, 0], y[:ns, 1], c=cmap(s_ids), s=10, marker="o", alpha=0.6, label="source")
  ax.scatter(y[ns:, 0], y[ns:, 1], c=cmap(matching[t_ids]), s=14, marker="x", alpha=0.7,
             label="target")
  for j in range(k):
    i = matching[j]
    ax.plot([sc[i, 0], tc[j, 0]], [sc[i, 1], tc[j, 1]], "-", color="k", lw=1)
  ax.scatter(sc[:, 0], sc[:, 1], c="k", marker="o", s=40, label="source centres")
  ax.scatter(tc[:, 0], tc[:, 1], c="k", marker="X", s=40, label="target centres")
  ax.set_title(f"{title} (clustering {period + 1} of the run)", fontsize=9)
  ax.set_xlabel("t-SNE 1")
  ax.set_ylabel("t-SNE 2")
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  files.write_bytes(pathlib.Path(path), buffer.getvalue())
