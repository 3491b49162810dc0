"""Feather-light Fourier domain adaptation: test-time k-space style swap with multi-source
transfer and SR-SIM style donors (Zakazov et al., DART 2022).

  python -m medda_jax.train --config=configs/fda.py --workdir=runs/fda \
      --config.data.root=/path/to/cc359                                  # paper setting
  python -m medda_jax.train --config=configs/fda.py:demo --workdir=runs/fda_demo
  python -m medda_jax.train --config=configs/fda.py:smoke --workdir=runs/fda_smoke

The default is the paper's CC359 protocol (spec fda_test_time.md §b: residual U-Net with 16
filters trained on the source site, 100 epochs x 100 steps, batch 16, SGD Nesterov 0.9,
lr 1e-3 -> 1e-4 at epoch 80, loss 0.4 BCE + 0.6 (1 - soft Dice); the six pairs of Table 2;
circular window, beta grid 0.005 .. 0.035, n_MST = 7, m = 2; 10 validation and 10 test scans
per target). `demo` runs the same pipeline on the embedded skull demo (one real head MRI,
synthetic subjects and scanner sites) scaled to a 2-core CPU; `smoke` runs in seconds.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/fda.py")
  c = ml_collections.ConfigDict()
  c.method = "fda"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # one source model per seed (its initialisation and batches)
  # The workdir of an earlier run of this method (or of gradient transfer with SGD): its
  # source models checkpoints/pretrain_sgd_<site>_seed<seed>/ are read instead of trained.
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  # "cc359" (published layout, registered to MNI152 beforehand), "demo_skull" (embedded,
  # no download) or "none" (data.user only)
  c.data.source = "cc359"
  # Your own sites, 'name=path' (a Decathlon-layout folder or a CSV manifest, as for
  # gradient transfer); name them in data.pairs. Slice correspondence between scans
  # assumes they are registered to one space (pitfall 3).
  c.data.user = ()
  c.data.user_modality = ""  # CSV manifests without a modality column: "CT" or "MR"
  c.data.ct_window = (-160.0, 240.0)  # CT sites: Hounsfield window scaled to [0, 1]
  c.data.root = ""  # CC359 folder (meta.csv + images/ + masks/, or Original/ + Silver-standard/)
  c.data.layout = "files"  # or "tfds": a TFDS data dir prepared by medda_jax.data.builders
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache (the demo: per user)
  c.data.spacing = (1.0, 1.0, 1.0)  # cc359: resampling target in mm
  # Training crop side (paper 256, reference code 160: D1); demo: also the slice side.
  c.data.crop = 256
  c.data.subjects_per_domain = 6  # demo only: synthetic subjects per site
  c.data.split_seed = 0  # seed of the per-site splits (and of the demo's build)
  c.data.source_holdout = 2  # source scans kept out of training (the paper's plateau check)
  c.data.val_subjects = 10  # labelled target validation scans per pair (beta selection)
  c.data.test_subjects = 10  # target test scans per pair
  # The source model's training slices, read by gradient transfer's trainer: every slice.
  c.data.training_slices = "all"
  # (source, target) pairs and their shift-severity group (Table 2 rows).
  c.data.pairs = (("siemens_3", "ge_15"), ("ge_3", "philips_3"),
                  ("philips_3", "ge_15"), ("siemens_15", "philips_3"),
                  ("philips_3", "siemens_15"), ("ge_15", "philips_15"))
  c.data.severity = ("severe", "severe", "medium", "medium", "subtle", "subtle")

  c.model = ml_collections.ConfigDict()
  c.model.features = 16  # n_filters_init of the residual U-Net (16-32-64-128)

  c.batch_size = 16
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.epochs = 100
  c.pretrain.steps_per_epoch = 100
  c.pretrain.learning_rate = 1e-3
  c.pretrain.decay_epoch = 80  # lr x decay_factor from this epoch on
  c.pretrain.decay_factor = 0.1
  # Training loss: "bce_dice" = 0.4 BCE + 0.6 (1 - soft Dice) (the reference's
  # ce_plus_dice), or "bce" (the gradient-transfer trainer's).
  c.loss = "bce_dice"
  c.optim = ml_collections.ConfigDict()
  c.optim.sgd_momentum = 0.9
  c.optim.sgd_nesterov = True
  c.optim.adam_b1, c.optim.adam_b2, c.optim.adam_eps = 0.9, 0.999, 1e-8  # unused with SGD

  c.fda = ml_collections.ConfigDict()
  c.fda.window = "circle"  # "circle" (the paper) or "square" (the original FDA)
  c.fda.betas = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035)  # radius beta * min(H, W)
  c.fda.n_mst = 7  # source donors per target slice
  c.fda.neighbours = 2  # m of 2.5D: slices i-m .. i+m of every source scan
  # Table columns besides "no DA": single random swap, MST with random donors, SR-SIM + MST.
  c.fda.methods = ("single", "mst", "srsim_3d", "srsim_2.5d", "srsim_2d")
  c.fda.random_seed = 42  # donors of the random modes (the reference seeds random with 42)
  c.fda.restyle_slices = 16  # target slices per restyle-and-segment call

  c.srsim = ml_collections.ConfigDict()  # piq's SR-SIM defaults
  c.srsim.scale = 0.25
  c.srsim.kernel_size = 3
  c.srsim.sigma = 3.8
  c.srsim.gaussian_size = 10
  c.srsim.batch = 8  # target slices per similarity call

  c.eval = ml_collections.ConfigDict()
  c.eval.tolerance_mm = 1.0  # surface Dice tolerance

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 25  # calls between checkpoints of source training

  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=32)
  common.alias(c, "eval.batch_size", "engine.eval_batch_size")
  common.alias(c, "data.crop_size", "data.crop")

  if variant in (None, "paper"):
    return c
  c.data.source = "demo_skull"
  c.data.crop = 32
  c.data.subjects_per_domain = 5
  c.data.source_holdout = 1
  c.data.val_subjects = 2
  c.data.test_subjects = 2
  # One clean source; three targets whose shifts are not pure low-frequency amplitude
  # changes, grouped by the unadapted model's measured drop (demo run, docs/fda.md):
  # a compressed, noisy intensity range (severe), a T2-like intensity inversion (medium),
  # a gamma change with a bias field (subtle)
  c.data.pairs = (("site_a_clean", "site_e_noisy"), ("site_a_clean", "site_f_inverted"),
                  ("site_a_clean", "site_b_gamma_dark"))
  c.data.severity = ("severe", "medium", "subtle")
  c.model.features = 8
  c.batch_size = 8
  c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 20, 15, 16
  # 32 px slices: the paper's radii in cycles per image (1.3 .. 9 at 256 px) need larger
  # beta (radii 1.3, 3.8, 7.7, 11.5 px here)
  c.fda.betas = (0.04, 0.12, 0.24, 0.36)
  c.fda.n_mst = 3
  c.fda.neighbours = 1
  c.srsim.scale = 0.5
  c.srsim.gaussian_size = 6
  c.srsim.sigma = 2.0
  c.eval.tolerance_mm = 7.0  # about one in-plane voxel of the demo (as 1 mm on CC359)
  c.engine.steps_per_call = 1
  c.engine.checkpoint_every = 100
  c.engine.eval_batch_size = 64
  if variant == "smoke":
    c.data.crop = 16
    c.data.subjects_per_domain = 3
    c.data.val_subjects = 1
    c.data.test_subjects = 1
    c.data.pairs = (("site_a_clean", "site_f_inverted"), ("site_a_clean", "site_b_gamma_dark"))
    c.data.severity = ("severe", "subtle")
    c.seeds = (0, 1)
    c.model.features = 2
    c.batch_size = 4
    c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 2, 4, 1
    c.fda.betas = (0.05, 0.15)
    c.fda.n_mst = 2
    c.srsim.scale = 1.0
    c.srsim.gaussian_size = 4
    c.engine.checkpoint_every = 4
  return c
