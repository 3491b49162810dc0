"""Feather-light Fourier domain adaptation in MRI (Zakazov, Shaposhnikov, Bespalov, Dylov;
DART 2022): test-time k-space style swap, multi-source transfer and SR-SIM style donors.

  python -m medda_jax.train --config=configs/fda.py --workdir=runs/fda \
      --config.data.root=/path/to/cc359
  python -m medda_jax.train --config=configs/fda.py:demo --workdir=runs/fda_demo

For each seed and source -> target pair:
  1. Train the source segmentation model (the residual U-Net of gradient transfer, its
     trainer: 0.4 BCE + 0.6 (1 - soft Dice), SGD Nesterov) on the source site; nothing is
     trained afterwards.
  2. On the target's labelled validation scans, for every beta of the grid: restyle every
     slice with n_MST source donors (random, or chosen by SR-SIM in 3D / 2.5D / 2D), segment
     each version, average the probabilities, threshold, score surface Dice per 3-D scan.
  3. Pick beta per pair and averaged over pairs; score the target's test scans with both,
     and the unadapted model.
Tables: Table 2's shape, rows grouped by shift severity, mean +- std over seeds.

Outputs in the workdir: `results.md` / `results.json`, `beta_curve.png`, `restyled.png`,
`fda_runs.json` (finished sweeps and tests; a rerun skips them), `similarity/` (SR-SIM
tables per target scan, .npz, and the chosen donors, .json), the source models'
checkpoints, `metrics.jsonl` and TensorBoard logs.

Layout: `paper.py` is the method (swap, MST, SR-SIM, donors), `experiment.py` runs it,
`report.py` makes its tables and `figures.py` its figures.
"""

from medda_jax.methods.fda.experiment import (METHOD_MODE, RESULTS_FILE, FdaExperiment,
                                              train_and_evaluate, validate)
from medda_jax.methods.fda.paper import (DONOR_MODES, WINDOWS, circular_mask, fda_swap,
                                         mst_mask, mst_probability, restyle_slices,
                                         select_donors, square_mask, srsim,
                                         swapped_spectrum)
from medda_jax.methods.fda.report import select_betas, summarise, tables_markdown
