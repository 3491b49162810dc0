"""StarGAN translation with CyCADA semantic consistency across sites (Valliani et al., seed 001).

  python -m medda_jax.train --config=configs/stargan.py:digits_demo --workdir=runs/stargan
  python -m medda_jax.train --config=configs/stargan.py:cxr --workdir=runs/cxr \
      --config.data.dirs.nih=/data/ChestX-ray14 \
      --config.data.dirs.chexpert=/data/CheXpert-v1.0-small
  python -m medda_jax.train --config=configs/stargan.py --workdir=runs/ours \
      --config.data.domains="('ourhospital=/data/our_xrays','clinic_b=/data/clinic_b.csv')"

A domain given as `name=path` is the user's own (`medda_jax.data.images`: a class-folder
root or a CSV path,label[,patient_id], any number of classes shared by the domains); results
and `pairs` call it `name`.

For every ordered pair of domains S -> T (the paper trains one two-domain model per pair;
S is domain 0, T domain 1):
1. A baseline classifier B_d per domain, trained on its training split with early stopping
   on validation AUC (LeNet for digits, DenseNet-121 for chest X-rays).
2. A StarGAN G(x, c) between S and T: n_critic critic updates (WGAN-GP on the patch map
   plus domain classification of real images), then one generator update (adversarial +
   domain classification of fakes + L1 cycle reconstruction + the semantic loss), then the
   task updates, all in one call of the GAN engine. The semantic loss (CyCADA) uses
   F_S = B_S and F_T (initialised from B_S, trained on translated source images):
       CE(F_S(G(G(x_s, T), S)), y_s) + CE(F_T(G(x_s, T)), y_s)
       + CE(F_S(G(x_t, S)), argmax F_T(x_t)).
   The paper's equations are missing from its text; the losses are StarGAN's reference
   solver and CyCADA's, as the spec reconstructs them (`stargan_losses`).
3. Every S training and validation image translated into T's style, G(x, T).
4. B_S fine-tuned on the translated training images with S's labels, early stopping on
   the translated validation images (no target label is used anywhere).
5. On T's test split: external AUC (B_S), adapted AUC (fine-tuned B_S) and the internal
   ceiling (B_T), each the whole-test-set AUC with its percentile bootstrap CI (and the
   paper's form, mean +- 1.96 sd / sqrt(B), beside it); adapted against external by a
   paired bootstrap (same resampled images), with a p-value; salvage = (adapted -
   external) / (internal(T) - external). Domain spread: one classifier on a fraction of the pooled training splits,
   the variance over domains of its 100 x AUC.

Outputs in the workdir: `results.md` / `results.json` (the per-pair table, averages,
salvage, domain spread), `predictions/*.npz` (each test set's labels and the models'
probabilities), `translations_<S>_to_<T>.png`, `pairs.json` (finished pairs; a
rerun skips them), classifier weights under `classifiers/`, the GAN checkpoints (a killed
run resumes mid-GAN), `metrics.jsonl` and TensorBoard logs.

Layout: `paper.py` is the method (the StarGAN and CyCADA losses, the schedule),
`augment.py` the chest X-ray classifiers' training augmentation, `experiment.py` runs it
(config, domains, task classifiers, one StarGAN per pair, translation, evaluation, the
driver) and `report.py` makes its tables.
"""

# The command line, the tests and the benchmarks use the package; its parts are re-exported.
from medda_jax.methods.stargan_da.experiment import (DIGIT_DOMAINS, CXR_SITES, CLASSIFIERS,
                                                     validate, domain_names, ordered_pairs,
                                                     Domain, load_domains, num_classes,
                                                     task_optimizer, balanced_indices,
                                                     TaskTrainer, pair_batches, PairGAN,
                                                     domain_spread, train_and_evaluate,
                                                     test_indices, auc_with_intervals,
                                                     evaluate_on, compare_on)
from medda_jax.engine.classifier import apply_task
from medda_jax.methods.stargan_da.paper import lr_schedule, stargan_losses
from medda_jax.methods.stargan_da.report import (PAPER, summarise, interval_text,
                                                 mean_interval_text, tables_markdown)
