"""CycleGAN unsupervised domain adaptation between mammography sites (spec cyclegan_uda.md).

  python -m medda_jax.train --config=configs/cyclegan.py:demo --workdir=runs/cyclegan
  python -m medda_jax.train --config=configs/cyclegan.py --workdir=runs/ddsm_ffdm \
      --config.data.dirs.cbis_ddsm=/data/CBIS-DDSM \
      --config.data.domains="('cbis_ddsm','ffdm=/data/our_ffdm')"

The default is the spec's setting: CBIS-DDSM (case CSVs + DICOM, "any malignant" label,
80/20 split by patient) against a full-field digital set given as a labelled folder or CSV
(the paper's UKY set is private), a CycleGAN with the reference's defaults (ResNet
generator with 9 blocks, 70x70 PatchGAN, LSGAN, cycle 10, identity 0.5, Adam 2e-4 for
100 + 100 epochs at batch 1, 50-image pools, 286 -> 256 crops), then AlexNet and
ResNet-50 at 224 px, baseline vs UDA, over 5 seeds. `demo` runs the same pipeline on real
digits (MNIST vs optdigits, "digit >= 5" as the label) at 32 px with a reduced CycleGAN and
classifier schedule, sized to a 2-core CPU — a demonstration, not a reproduction. `smoke`
is a seconds-long run for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("ddsm", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/cyclegan.py")
  c = ml_collections.ConfigDict()
  c.method = "cyclegan_uda"  # module in medda_jax/methods/
  c.variant = variant or "ddsm"

  c.data = ml_collections.ConfigDict()
  # Exactly two domains, A then B. Built-in: "cbis_ddsm" (folder in dirs), "mnist",
  # "optdigits" (embedded demo digits); or your own as name=path: a class-folder root
  # <path>/<class>/*.png|jpg|dcm or a CSV path,label[,patient_id] with two classes (split by
  # patient when the CSV has patient_id). Results call a domain by its name.
  c.data.domains = ("cbis_ddsm", "ffdm=")
  c.data.dirs = ml_collections.ConfigDict({"cbis_ddsm": ""})  # the folder holding CBIS-DDSM/
  c.data.cbis_split = "patient"  # "patient": 80/20 by patient (the seed); "official": CBIS's
  c.data.positive_class = ""  # a user domain's positive class name ("" = the last, sorted)
  c.data.test_fraction = 0.2  # per domain (the seed: 80 % train / 20 % test)
  c.data.val_fraction = 0.1  # of a domain's training images, for early stopping
  c.data.max_per_domain = 0  # images kept per domain before splitting (0 = all)
  c.data.split_seed = 0

  c.cyclegan = ml_collections.ConfigDict()  # reference defaults (spec (b))
  c.cyclegan.load_size = 286  # training: resize to load_size, random crop to crop_size
  c.cyclegan.crop_size = 256  # also the translation size
  c.cyclegan.flip = True  # random horizontal flips in training
  c.cyclegan.ngf = 64
  c.cyclegan.n_blocks = 9
  c.cyclegan.ndf = 64
  c.cyclegan.n_layers = 3  # 70x70 PatchGAN
  c.cyclegan.lambda_a = 10.0
  c.cyclegan.lambda_b = 10.0
  c.cyclegan.lambda_identity = 0.5
  c.cyclegan.pool_size = 50  # per direction
  c.cyclegan.learning_rate = 2e-4
  c.cyclegan.beta1 = 0.5
  c.cyclegan.beta2 = 0.999
  c.cyclegan.n_epochs = 100  # constant learning rate
  c.cyclegan.n_epochs_decay = 100  # then linearly to 0
  c.cyclegan.batch_size = 1
  c.cyclegan.steps_per_call = 1  # iterations per jitted call (a lax.scan on GPU/TPU)
  c.cyclegan.checkpoint_every = 500  # calls

  c.classifiers = ("alexnet", "resnet50")
  c.classifier = ml_collections.ConfigDict()  # spec (b), R: the seed gives no settings
  c.classifier.size = 224  # classifier input (images are translated at crop_size, resized)
  c.classifier.learning_rate = 1e-4  # Adam
  c.classifier.learning_rates = ml_collections.ConfigDict({})  # per classifier, if different
  c.classifier.batch_size = 32
  c.classifier.max_epochs = 50
  c.classifier.patience = 5  # epochs without a better validation auROC before stopping
  c.classifier.flip = True  # random horizontal flips
  # Per classifier, attributes of its model (AlexNet: fc_features; ResNet: width, stage_sizes).
  c.classifier.overrides = ml_collections.ConfigDict({"alexnet": {}, "resnet50": {}})
  c.seeds = (0, 1, 2, 3, 4)  # training runs per cell: mean +- 1.96 sd / sqrt(R)

  c.eval = ml_collections.ConfigDict()
  c.eval.bootstrap = 1000  # per-run test-set bootstrap replicates (percentile CI)
  c.eval.grid_images = 8  # images per row of the translation grids

  common.add_shared(c, seed=None, steps_per_call=10, eval_batch_size=64)

  if variant in ("demo", "smoke"):
    c.data.domains = ("mnist", "optdigits")
    c.data.max_per_domain = 1000
    c.cyclegan.load_size = 36
    c.cyclegan.crop_size = 32
    c.cyclegan.ngf = 16
    c.cyclegan.n_blocks = 6
    c.cyclegan.ndf = 32
    c.cyclegan.n_layers = 2
    c.cyclegan.n_epochs = 10
    c.cyclegan.n_epochs_decay = 10
    c.cyclegan.batch_size = 8
    c.cyclegan.checkpoint_every = 50
    c.classifier.size = 64  # AlexNet needs >= 63 px
    # Narrower classifiers on a CPU: AlexNet's dense layers 512 wide (4096 in the paper's),
    # ResNet-50's stages a quarter as wide (same depth).
    c.classifier.overrides.alexnet = {"fc_features": 512}
    c.classifier.overrides.resnet50 = {"width": 16}
    # ResNet-50 from scratch learns little in a few epochs at 1e-4 (demo: in-domain auROC
    # 0.61-0.65 at 1e-4, 0.80-0.89 at 1e-3); AlexNet keeps the spec's 1e-4.
    c.classifier.learning_rates = {"resnet50": 1e-3}
    c.classifier.max_epochs = 6
    c.classifier.patience = 2
    c.engine.steps_per_call = 2
    c.seeds = (0, 1, 2)
  if variant == "smoke":
    c.data.max_per_domain = 80
    c.cyclegan.load_size = 18
    c.cyclegan.crop_size = 16
    c.cyclegan.ngf = 4
    c.cyclegan.n_blocks = 1
    c.cyclegan.ndf = 4
    c.cyclegan.n_layers = 1
    c.cyclegan.pool_size = 6
    c.cyclegan.n_epochs = 1
    c.cyclegan.n_epochs_decay = 1
    c.cyclegan.batch_size = 4
    c.cyclegan.steps_per_call = 2
    c.cyclegan.checkpoint_every = 2
    c.classifier.size = 64
    c.classifier.overrides.alexnet = {"fc_features": 32}
    c.classifier.overrides.resnet50 = {"width": 4, "stage_sizes": (1, 1, 1, 1)}
    c.classifier.batch_size = 16
    c.engine.steps_per_call = 2
    c.engine.eval_batch_size = 32
    c.classifier.max_epochs = 1
    c.classifier.patience = 1
    c.seeds = (0, 1)
    c.eval.bootstrap = 20
    c.eval.grid_images = 4
  return c
