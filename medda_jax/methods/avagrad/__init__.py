"""Fewer epochs with AvaGrad instead of 1000 epochs of SGD (Sheikh, Klasen, Schultz,
DART 2022): across-scanner generalisation of a 2-D nnU-Net trained on one site.

  python -m medda_jax.train --config=configs/avagrad.py:demo --workdir=runs/avagrad_demo
  python -m medda_jax.train --config=configs/avagrad.py --workdir=runs/cc359 \
      --config.data.root=/data/CC359

For each column of the grid (optimiser x epoch budget, e.g. S-1000 = nnU-Net's SGD for 1000
epochs, AG-50 = AvaGrad for 50) and each seed:
  1. train the fixed 2-D nnU-Net-like U-Net (`models/nnunet2d.py`, Dice + CE with deep
     supervision) on the source site's training subjects: nnU-Net's augmentations
     (`augment.py`, a grain pipeline), epochs of `train.steps_per_epoch` iterations, the
     learning rate decayed by nnU-Net's poly schedule over the run's own budget; the
     mean |Δw| of every layer is logged per epoch (Fig. 2);
  2. predict every slice of every volume of the source's test subjects and of every unseen
     site, and score each 3-D volume (surface Dice at the tolerance; M&Ms: Dice per class).
Table: rows = evaluation sets, columns = runs, mean ± std over seeds (Table 1's shape).

Layout: `medda_jax/optim/avagrad.py` is the optimiser; `paper.py` the optimiser factory,
schedule, loss and update-size logger; `augment.py` the training samples; `experiment.py`
the driver; `report.py` the table; `figures.py` Fig. 2.
"""

from medda_jax.methods.avagrad.experiment import (RESULTS_FILE, Study, load_domains,
                                                  train_and_evaluate, validate)
from medda_jax.methods.avagrad.paper import (OPTIMIZERS, EpochUpdateSizes, group_update_sizes,
                                             optimizer, poly_factor, track_update_sizes,
                                             training_loss)
from medda_jax.methods.avagrad.report import run_key, summarise, tables_markdown

__all__ = ["RESULTS_FILE", "Study", "load_domains", "train_and_evaluate", "validate", "OPTIMIZERS",
           "EpochUpdateSizes", "group_update_sizes", "optimizer", "poly_factor",
           "track_update_sizes", "training_loss", "run_key", "summarise", "tables_markdown"]
