"""MetaMedSeg (Farshad et al., DART 2022): volumetric Reptile meta-learning for few-shot
organ segmentation, with its baselines, as one experiment.

  1. Cut 2-D binary datasets (structure x sequence) from volumes; hold out the targets.
  2. Transfer baseline: pre-train one U-Net on the union of the source datasets, one
     output convolution per source dataset (they label the same images differently).
  3. For each Reptile rule (AW, IDW; or Dawoud et al.'s baseline): meta-train an
     initialisation — every meta-iteration samples L datasets with 1/z group weights,
     builds a volumetric task of K slices from one volume of each, adapts a copy of θ to
     each task (Adam, batch 1, fresh state), and moves θ ← θ + β Σ_l w_l (θ_l − θ).
  4. Fine-tune every initialisation (random, transfer, meta) on 15 fixed shots of each
     target, for several shot selections, or on all its training slices (full-data
     regime), and report the test IoU (mean ± std).

Every stage checkpoints and resumes; finished fine-tuning runs are kept in
`finetune_results.json`, so a killed run restarted with the same command ends with the
same table.

Layout: the paper's update rules are optax transforms (`medda_jax/optim/reptile.py`: AW
and IDW; `optim/maml.py`), its tasks and their weighted sampling are in
`medda_jax/data/tasks.py`, and the meta step in `engine/meta.py`; `experiment.py` runs
the method (config, data, pre-training, meta-training, fine-tuning, the driver) and
`report.py` makes its table.
"""

# The command line, the tests and the benchmarks use the package; its parts are re-exported.
from medda_jax.methods.metamedseg.experiment import (DEMO_TARGETS, RESULTS_FILE, validate,
                                                     load_collection, targets_and_sources,
                                                     load_initialisations, Experiment,
                                                     train_and_evaluate)
from medda_jax.methods.metamedseg.report import (results_table, table_markdown)
