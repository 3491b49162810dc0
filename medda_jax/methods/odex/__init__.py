"""ODEx (González, Ranem, Othman, Mukhopadhyay, DART 2022): task-agnostic continual
hippocampus segmentation by out-of-distribution detection and model expansion.

  1. Train a 3-D U-Net on the first stage; keep the mean and covariance of the first
     normalisation layer's input features (channel means) on its training images.
  2. For each new stage: compute its features under every model of the pool; the model with
     the lowest mean (normalised) summed Mahalanobis distance to its history is selected.
     Below the threshold it trains on, above it a copy of it is trained (expansion); the
     trained model's statistics on the stage join its history.
  3. At test time each image goes to the model with the smallest summed distance.
Baselines: sequential fine-tuning, EWC, LwF and joint training. After every stage every
stage's test set is scored: the Dice matrix, BWT and FWT.

Layout: `paper.py` the algorithm (statistics, distances, the pool, EWC / LwF terms,
BWT / FWT), `data.py` the stream (demo, Decathlon Task04, your manifests), `experiment.py`
the driver, `report.py` the tables, `figures.py` the pool figure.
"""

from medda_jax.methods.odex.experiment import (METHODS, RESULTS_FILE, Experiment,
                                               threshold_value, train_and_evaluate, validate)

__all__ = ["METHODS", "RESULTS_FILE", "Experiment", "threshold_value", "train_and_evaluate",
           "validate"]
