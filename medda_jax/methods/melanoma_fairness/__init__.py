"""Detecting melanoma fairly (Bevan, Atapour-Abarghouei, DART 2022): skin-tone labelling by
the individual typology angle (ITA) and unlearning skin tone with a bias head (LNTL, TABE,
CLGR = TABE with gradient reversal).

For each method and seed: train the encoder f, melanoma head g and skin-type bias head h
with the method's update rule (two optimiser half-steps per mini-batch, separate optax
states for main = f+g, bias = h, confusion = f); score sigmoid(g(f(x))) per skin-type
group of the test set and on out-of-distribution domains. Tables: methods x groups AUC and
the gap between groups (mean +- std over seeds), the ITA labeller's accuracy.

Layout: `ita.py` the labeller, `paper.py` the network and update rules, `data.py` the
loaders and the demo's synthetic skin, `experiment.py` the driver, `report.py` the tables,
`figures.py` the per-group AUC bars.
"""

from medda_jax.methods.melanoma_fairness.experiment import (RESULTS_FILE, train_and_evaluate,
                                                            validate)

__all__ = ["RESULTS_FILE", "train_and_evaluate", "validate"]
