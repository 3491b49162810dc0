"""The figure of the stain-regeneration task: validation patches of the training lab, their
HED-light twins and M_gen's regeneration of the raw patch from the twin's features; then
patches of the unseen labs and their regenerations (the network as a stain normaliser)."""

from __future__ import annotations

import numpy as np

from medda_jax import plots
from medda_jax.methods.stain_aglr import hed


def regeneration_figure(path, exp, variables, seed: int, demo: bool, n: int = 8) -> None:
  rng = np.random.default_rng((seed, 99))
  raw = exp.source.images(exp.val_idx[:n])[:]
  jittered = np.stack([hed.apply_np(x, hed.draw_np(rng, x.shape, exp.ranges),
                                      exp.ranges.blur_radius) for x in raw])
  rows = {"raw (train lab)": raw, "HED-light twin": jittered,
          "regenerated from twin": exp.regenerate(variables, jittered)}
  for lab, idx in exp.test_idx.items():
    patches = exp.source.images(idx[:n])[:]
    rows[lab] = patches
    rows[f"{lab} regenerated"] = exp.regenerate(variables, patches)
  plots.image_rows(path, rows, "Stain-AgLr: stain-jittered patches and their regenerations"
                   + (" (demo data)" if demo else ""))
