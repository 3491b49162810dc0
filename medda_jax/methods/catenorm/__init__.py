"""CateNorm: categorical normalisation for robust medical image segmentation (seed 003,
Xiao et al., DART 2022).

  python -m medda_jax.train --config=configs/catenorm.py:demo --workdir=runs/catenorm_demo
  python -m medda_jax.train --config=configs/catenorm.py --workdir=runs/prostate \
      --config.data.root=/data/SAML_prostate

For each site (single-domain) or all sites together (multi-domain), each method (BN, IN,
GN, DSBN, CateNorm with CNRB block 1 or blocks 1-4) and each seed: one training run
(`paper.py`: the two half-steps of Algorithm 1 in one jitted step; CateNorm's stage 1 is
the BN run), then per-class Dice of the site's test volumes for the last and the
val-selected model, from the final output and, for CateNorm, also from its BN pass.

Outputs in the workdir: `results.md` / `results.json` (Table 1 / 2 shape, mean +- std over
seeds), `predictions.png` (every method on the same slices), `runs.json` (finished runs; a
rerun skips them), per-run checkpoints while a run trains, `metrics.jsonl` and TensorBoard
logs.
"""

from medda_jax.methods.catenorm.experiment import (METHODS, Experiment, load_sites,
                                                   train_and_evaluate, validate)
from medda_jax.methods.catenorm.paper import (CateNormState, build_train_step, create_state,
                                              group_of, merge_params, segmentation_loss,
                                              split_params)

__all__ = ["METHODS", "CateNormState", "Experiment", "build_train_step", "create_state",
           "group_of", "load_sites", "merge_params", "segmentation_loss", "split_params",
           "train_and_evaluate", "validate"]
