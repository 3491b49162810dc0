"""Class-wise WGAN synthetic augmentation across hospitals (Alrajhi et al., seed 000).

  python -m medda_jax.train --config=configs/wgan_synth.py --workdir=runs/busi \
      --config.data.source_dir=/data/Dataset_BUSI_with_GT \
      --config.data.target_dirs.breast=/data/BrEaST
  python -m medda_jax.train --config=configs/wgan_synth.py:table1_poland --workdir=runs/t1p \
      --config.data.source_dir=/data/BrEaST --config.data.target_dirs.busi=/data/BUSI
  python -m medda_jax.train --config=configs/wgan_synth.py:demo --workdir=runs/wgan_demo
  python -m medda_jax.train --config=configs/wgan_synth.py --workdir=runs/ours \
      --config.data.source=ourhospital=/data/our_us \
      --config.data.targets="('clinic_b=/data/clinic_b.csv',)" \
      --config.data.positive_classes="('benign','normal')" \
      --config.data.negative_classes="('malignant',)"

A domain given as `name=path` is the user's own (`medda_jax.data.images`: a class-folder
root or a CSV path,label[,patient_id]); results call it `name`.

Algorithm 1 of the paper, then its ratio experiment (or the all-data settings of its
Tables 1 and 6, see configs/wgan_synth.py):
1. Split the source hospital's images by class; hold out a source test set first (none in
   Table 6's "real 780" setting), so that neither the GANs nor the classifiers ever see it
   (nor any target image).
2. Train one unconditional WGAN per class on that class's source training images (the
   class is the partition, not a network input): n_critic critic updates, then one
   generator update, as jitted chunks of the GAN engine (`medda_jax.engine.gan`), with
   torch's RMSprop (eps outside the root) as the paper's reference code.
3. Sample each class's generator; its samples take the class's label. Horizontal flips of
   the samples (and, optionally, of the real images) count as synthetic, as in the paper.
4. For every classifier and every synthetic count S (0, 25, 50, 75, 100 with 100 real
   images: ratios real-only, 4:1, 2:1, 3:2 (really 4:3), 1:1), train on real + S synthetic
   images (a "mirrored" row doubles that set with its flips: Table 6's 1580), keep the
   epoch with the best accuracy on a validation split of the real training images, and
   measure accuracy on the source test set and on every target hospital. ResNet-50 and
   ViT-B/16 can start from torchvision ImageNet weights the user supplies
   (`pretrained.py`). Domain gap = in-domain accuracy - out-of-domain accuracy; the
   paper's tables use the real-only model's in-domain accuracy on every row (`gap`),
   `gap_row` uses the row's own.

Outputs in the workdir: `results.md` / `results.json` (the table, mean ± std over seeds),
`ratio.png` (accuracy against the synthetic count, one panel per classifier),
`samples_<class>.png` (real and generated images per class), `synthetic.npz` (the samples
with their manifest), `wgan_results.json` (every run; a rerun skips finished runs), the GAN
checkpoints (a killed run resumes), `metrics.jsonl` and TensorBoard logs.

Layout: `paper.py` is the method (the WGAN losses, the mixing of real and synthetic
images, the domain gap), `experiment.py` runs it (config, data, the class GANs, the
classifiers, the sweep and its driver), `pretrained.py` reads ImageNet weights, and
`report.py` makes its tables.
"""

# The command line, the tests and the benchmarks use the package; its parts are re-exported.
from medda_jax.methods.wgan_aug.experiment import (SOURCES, TARGETS, CLASSIFIERS,
                                                   RESULTS_FILE, validate, Splits,
                                                   stratified, binary_table, load_splits,
                                                   domain_names, gan_batches, ClassGAN,
                                                   check_pool_sizes, classifier_batches,
                                                   epoch_order, call_length, torch_rmsprop,
                                                   gan_optimizer, accuracy_and_recall,
                                                   Classifiers, train_and_evaluate)
from medda_jax.methods.wgan_aug.paper import (wgan_losses, synthetic_pool, class_counts,
                                              mixed_training_set, mirrored, domain_gap)
from medda_jax.methods.wgan_aug.report import (ratio_label, row_ids, parse_row, summarise,
                                               tables_markdown)
from medda_jax.methods.wgan_aug.pretrained import (PRETRAINED, load_pretrained,
                                                   load_torchvision_vit, read_state_dict,
                                                   imagenet_standardise)
