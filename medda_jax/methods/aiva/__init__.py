"""AIVA: unsupervised site adaptation by intra-site variability alignment (Goodman,
Kasten Serlin, Greenspan, Goldberger, DART 2022), on cross-site skull stripping.

For each source -> target site pair and seed:
  1. Pre-train the residual U-Net (2 output channels, softmax cross-entropy) on the labelled
     source site (SGD Nesterov, polynomial lr decay): the source model (lower bound).
  2. AdaBN: the source model with BatchNorm statistics re-estimated on target slices.
  3. AIVA: fine-tune the source model on source labels plus the alignment loss. Every
     period (epoch_every steps) the bottleneck (BNS) features of the slices drawn in it are
     embedded jointly (PCA -> slice position -> t-SNE 2-D), clustered per site (k-means,
     target started from the source centres) and the clusters matched (Hungarian); then
     each step pulls the mean BNS feature of the target slices of cluster i towards the
     mean source feature of its matched cluster. Only the encoder up to the tap and the
     output path are trained. The first period only collects features.
  4. Optionally the target model (trained with target labels, upper bound).
Every model is scored by surface Dice on the target site's test volumes; the last AIVA
model is reported. Table: targets x methods, mean +- std over seeds.

Layout: `paper.py` the algorithm (tap, clustering and matching, loss, lambda, optimizers),
`experiment.py` the driver, `report.py` the table, `figures.py` the t-SNE figure.
"""

from medda_jax.methods.aiva.experiment import (RESULTS_FILE, Experiment, SlicePlan,
                                               AdaptationBatches, run_key, validate,
                                               train_and_evaluate)

__all__ = ["RESULTS_FILE", "Experiment", "SlicePlan", "AdaptationBatches", "run_key",
           "validate", "train_and_evaluate"]
