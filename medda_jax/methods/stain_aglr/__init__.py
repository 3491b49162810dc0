"""Stain-AgLr: stain-agnostic learning with domain consistency and stain regeneration losses
(Raipuria, Shrivastava, Singhal, DART 2022), patch classification on unseen labs.

For each variant of the ablation and seed:
  1. Train on one lab's patches with Adam; each mini-batch x (rotations by 90 degrees,
     flips) gets a HED-light twin x_hat inside the jitted step; x and x_hat go through the
     feature extractor together; L = L_CE + lambda1 L_Reg + lambda2 L_Cons with the KL
     consistency KL(p || p_hat) and the decoder's regeneration of x from x_hat's features.
     Variants: Vanilla (no stain augmentation), HED-light aug, + L_Reg, + L_Cons, Stain-AgLr.
  2. Learning rate x0.1 when the validation loss has not improved for `patience` epochs;
     stop when it reaches 1e-5; keep the epoch of the lowest validation loss.
  3. Patch-level ROC-AUC of the kept classifier on every unseen lab.
Table: variants x unseen labs, mean +- std over seeds; figure: jittered patches and their
regenerations.

Layout: `hed.py` colour deconvolution and HED-light, `paper.py` networks, losses and the
plateau schedule, `data.py` the per-lab loaders and the demo set, `experiment.py` the
driver, `report.py` the table, `figures.py` the figure.
"""

from medda_jax.methods.stain_aglr.experiment import (RESULTS_FILE, Experiment, run_key,
                                                     train_and_evaluate, validate)

__all__ = ["RESULTS_FILE", "Experiment", "run_key", "train_and_evaluate", "validate"]
