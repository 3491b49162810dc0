"""Supervised domain adaptation by transferring gradients (Goodman, Greenspan, Goldberger,
DART 2022): mixed-minibatch transfer (MMTL) and optimizer-state continuation (OCTL), with
the fine-tuning baselines, on cross-site skull stripping (CC359), prostate MRI (pooled source
sites, 3 adjacent slices, Dice) and chest X-ray classification (`classification.py`:
DenseNet-121 with source and target heads, mean AUC).

For each optimizer (SGD, Adam), source -> target site pair and seed:
  1. Pre-train the residual U-Net on the source site's training subjects (BCE, batch B,
     lr 1e-3 -> 1e-4 at 3/4 of the epochs); keep its optimizer state in the checkpoint.
  2. For each target budget (subjects x slice step), fine-tune the source model with
       fta       all layers, target data only, fresh optimizer;
       ftf       only the first layers (`ftf.trainable_prefixes`), fresh optimizer;
       l2sp      all layers plus alpha ||theta - theta_source||^2 (an optax transform);
       spottune  per input, a policy picks the frozen or a fine-tuned copy of every
                 residual block (hard Gumbel-softmax, penalty on fine-tuned blocks);
       octl      fresh schedule, but the pre-training moments (SGD buffer, or Adam's
                 M and V with the step count at 100) continue with mu / beta1 = 0.99;
       mmtl      batches mixing n_t target and B - n_t source samples, n_t growing with
                 the epoch (Algorithm 1), fresh optimizer.
  3. Score every model on the target site's test subjects (surface Dice at the tolerance,
     per 3-D volume) and on the source site's test subjects (source retention).
Tables: mean +- std over seeds of the pair-averaged scores, per optimizer and budget.

Layout: the paper's transfers are optax transforms and a batch schedule
(`medda_jax/optim/transfer.py`: OCTL's continued moments, L2-SP, the masks of FTF;
`medda_jax/data/mixed.py`: MMTL's mixed minibatches and their target-count schedule,
Algorithm 1); `experiment.py` runs the method (config, data, pre-training, every
fine-tuning method, evaluation, the driver) and `report.py` makes its tables.
"""

# The command line, the tests and the benchmarks use the package; its parts are re-exported.
from medda_jax.methods.gradient_transfer.experiment import (METHODS, RESULTS_FILE, validate,
                                                            user_site, load_domains,
                                                            SiteSplit, split_site,
                                                            Experiment, target_budget_pool,
                                                            train_and_evaluate)
from medda_jax.methods.gradient_transfer.report import (run_key, summarise, tables_markdown)
