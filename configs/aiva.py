"""AIVA: unsupervised site adaptation by intra-site variability alignment.

  python -m medda_jax.train --config=configs/aiva.py --workdir=runs/aiva_cc359 \
      --config.data.root=/path/to/cc359                                   # paper setting
  python -m medda_jax.train --config=configs/aiva.py:demo --workdir=runs/aiva_demo
  python -m medda_jax.train --config=configs/aiva.py:smoke --workdir=runs/aiva_smoke

The default is the paper's CC359 protocol (spec aiva.md (b)): residual U-Net with 16
filters and 2 output channels; pre-training 5000 steps, batch 16, SGD Nesterov 0.9, weight
decay 5e-4, lr 1e-3 x (1 - step/5000)^0.9; fine-tuning 6500 steps (the first 1000 only
collect features), source batch 8 + target batch 8, lr 5e-6 x 0.1 at steps 5000 and 6000,
k = 12 clusters re-computed every 1000 steps, lambda = 0.9 / mean(first 6 alignment losses),
slice-position feature on (reference code). `demo` runs the pipeline on the embedded
skull-stripping demo (one real head MRI, synthetic subjects and scanner sites; target labels
hidden from training) scaled to a 2-core CPU; `smoke` runs in seconds for the tests.
"""

import itertools

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

CC359_SITES = ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")
VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/aiva.py")
  c = ml_collections.ConfigDict()
  c.method = "aiva"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # each: source model init and batches, fine-tuning batches, t-SNE
  c.init_from = ""  # (read by the shared site loader; AIVA always pre-trains its own models)

  c.data = ml_collections.ConfigDict()
  # "cc359" (published layout), "demo_skull" (embedded, no download) or "none" (data.user only)
  c.data.source = "cc359"
  # Your own sites, 'name=path': a Decathlon-layout folder (one site) or a CSV manifest
  # image,label[,subject][,site][,modality]; name them in data.pairs. Target labels are read
  # only to score the models.
  c.data.user = ()
  c.data.user_modality = ""  # CSV manifests without a modality column: "CT" or "MR"
  c.data.ct_window = (-160.0, 240.0)  # your CT sites: HU window scaled to [0, 1]
  c.data.root = ""  # CC359 folder (meta.csv + images/ + masks/, or Original/ + Silver-standard/)
  c.data.layout = "files"  # or "tfds" (a TFDS data dir prepared by medda_jax.data.builders)
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache (the demo: per user)
  c.data.spacing = (1.0, 1.0, 1.0)  # cc359 resampling target in mm
  c.data.crop = 256  # training crop side (demo: also the slice side); divisible by 8
  c.data.subjects_per_domain = 6  # demo only: synthetic subjects per site
  c.data.test_subjects = 10  # test subjects held out per site (AIVA split: ~45/5/10)
  c.data.train_subjects = 45  # training subjects used per site (reference: data_len = 45; 0 = all)
  c.data.split_seed = 0
  # Ordered (source, target) pairs; the paper reports 25 of the 30 CC359 pairs.
  c.data.pairs = tuple(itertools.permutations(CC359_SITES, 2))

  c.model = ml_collections.ConfigDict()
  c.model.features = 16  # n_filters_init (16-32-64-128); the BNS tap has 8x this many channels

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 5000
  c.pretrain.batch_size = 16
  c.pretrain.learning_rate = 1e-3  # x (1 - step / steps)^power
  c.pretrain.power = 0.9
  c.pretrain.momentum = 0.9  # SGD Nesterov
  c.pretrain.weight_decay = 5e-4  # coupled (added to the gradient, as torch SGD)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 6500  # including the collect-only first period
  c.finetune.source_batch = 8
  c.finetune.target_batch = 8
  c.finetune.learning_rate = 5e-6
  c.finetune.decay_steps = (5000, 6000)  # lr x decay_factor at these iterations
  c.finetune.decay_factor = 0.1
  c.finetune.momentum = 0.9
  c.finetune.weight_decay = 5e-4

  c.aiva = ml_collections.ConfigDict()
  c.aiva.k = 12  # clusters per site
  c.aiva.epoch_every = 1000  # steps per clustering period
  # "paper": sum over clusters of the squared L2 distance per mini-batch; "macro_batch": the
  # reference code's count-weighted element MSE over acc_batches target mini-batches taken
  # as one step (source batch scaled alike; acc_batches x 8 > acc_amount 35).
  c.aiva.loss = "paper"
  c.aiva.acc_batches = 5
  c.aiva.dist_loss_lambda = 0.9  # lambda = this / mean(first lambda_batches alignment losses)
  c.aiva.lambda_batches = 6
  c.aiva.pca_dim = 20
  c.aiva.tsne_iterations = 1000  # t-SNE optimisation steps (scikit-learn's default; >= 250)
  c.aiva.use_slice_num = True  # append slice index / slices to the PCA features (code, not paper)

  c.adabn = ml_collections.ConfigDict()
  c.adabn.passes = 1  # train-mode passes over the target training slices

  c.bounds = ml_collections.ConfigDict()
  c.bounds.target_model = True  # also train on the target labels (upper bound column)

  c.eval = ml_collections.ConfigDict()
  c.eval.tolerance_mm = 1.0  # surface Dice tolerance

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 50  # calls between checkpoints
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=32)

  if variant in (None, "paper"):
    return c
  c.data.source = "demo_skull"
  c.data.crop = 32
  c.data.subjects_per_domain = 5
  c.data.test_subjects = 2
  c.data.train_subjects = 0
  c.data.pairs = (("site_a_clean", "site_c_gamma_bright"),)
  c.model.features = 8
  c.pretrain.steps, c.pretrain.batch_size = 160, 8
  c.finetune.steps, c.finetune.decay_steps = 160, (120, 140)
  c.finetune.learning_rate = 1e-4  # the paper's 5e-6 hardly moves a 160-step run
  c.aiva.k = 6
  c.aiva.epoch_every = 40
  c.eval.tolerance_mm = 7.0  # about one in-plane voxel of the demo (as 1 mm on CC359)
  c.engine.steps_per_call = 4
  c.engine.checkpoint_every = 10
  if variant == "smoke":
    c.data.crop = 16
    c.data.subjects_per_domain = 3
    c.data.test_subjects = 1
    c.seeds = (0, 1)
    c.model.features = 2
    c.pretrain.steps, c.pretrain.batch_size = 8, 4
    c.finetune.steps, c.finetune.decay_steps = 24, (16, 20)
    c.finetune.source_batch = c.finetune.target_batch = 4
    c.aiva.k = 3
    c.aiva.epoch_every = 8
    c.aiva.pca_dim = 5
    c.aiva.tsne_iterations = 250  # the fewest scikit-learn allows: smoke tests the plumbing
    c.engine.steps_per_call = 1  # one traced step per compiled chunk: the cheapest compile
    c.engine.checkpoint_every = 4
  return c
