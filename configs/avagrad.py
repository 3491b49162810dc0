"""AvaGrad with few epochs vs nnU-Net's SGD for 1000 epochs, trained on one scanner site.

  python -m medda_jax.train --config=configs/avagrad.py --workdir=runs/cc359 \
      --config.data.root=/path/to/cc359                                   # paper setting
  python -m medda_jax.train --config=configs/avagrad.py --workdir=runs/mnms \
      --config.data.source=mnms --config.data.root=/path/to/MnM --config.data.train_site=B \
      --config.eval.metric=dice
  python -m medda_jax.train --config=configs/avagrad.py:demo --workdir=runs/avagrad_demo
  python -m medda_jax.train --config=configs/avagrad.py:smoke --workdir=runs/avagrad_smoke

The default is the paper's CC-359 grid (spec avagrad.md §b): source GE 3T, nnU-Net 2D
(Dice + CE, deep supervision, nnU-Net's augmentations), epochs of 250 iterations, SGD
(lr 0.01, Nesterov 0.99, wd 3e-5) for 1000 / 50 / 25 epochs, Adam (lr 3e-4, an assumption:
the paper gives none) for 50 / 25, AvaGrad (lr 10, eps 0.1) for 1000 / 50 / 25, three seeds,
surface Dice at 1 mm. `--config.augment.enabled=False` is the no-augmentation ablation
(Table 3). `demo` runs a short and a long budget of SGD and AvaGrad on the embedded skull
demo (one real head MRI, synthetic subjects and scanner sites) scaled to a 2-core CPU;
`smoke` runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/avagrad.py")
  c = ml_collections.ConfigDict()
  c.method = "avagrad"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # each: initialisation and the training samples

  # Columns: (name, optimizer, epochs); optimizers "sgd", "adam", "avagrad".
  c.runs = (("S-1000", "sgd", 1000), ("S-25", "sgd", 25), ("S-50", "sgd", 50),
            ("A-25", "adam", 25), ("A-50", "adam", 50), ("AG-25", "avagrad", 25),
            ("AG-50", "avagrad", 50), ("AG-1000", "avagrad", 1000))

  c.data = ml_collections.ConfigDict()
  # "cc359" (published layout), "mnms" (M&Ms published layout), "demo_skull" (embedded) or
  # "none" (data.user only)
  c.data.source = "cc359"
  c.data.root = ""  # CC359 folder, or the M&Ms folder (Training/Labeled/ + the information CSV)
  c.data.layout = "files"  # cc359: "files" (published layout) or "tfds" (prepared TFDS dir)
  c.data.train_site = "ge_3"  # the source site; every other site is an unseen target
  # Your own sites, 'name=path' (Decathlon-layout folder or CSV manifest, see data/user_seg.py);
  # name one of them in train_site to train on it; all are evaluated.
  c.data.user = ()
  c.data.user_modality = ""  # CSV manifests without a modality column: "CT" or "MR"
  c.data.ct_window = (-160.0, 240.0)
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache (the demo: per user)
  c.data.spacing = (1.0, 1.0, 1.0)  # cc359: resampling target in mm
  c.data.patch = 256  # training patch side (demo: also the slice side)
  c.data.subjects_per_domain = 6  # demo only
  c.data.test_subjects = 10  # source subjects held out for the source test set
  c.data.split_seed = 0
  c.data.max_target_volumes = 0  # 0: every volume of each unseen site
  c.data.threads = 2  # grain worker threads for sampling and augmentation

  c.model = ml_collections.ConfigDict()
  c.model.stages = 7  # resolutions: 256 -> 4 (nnU-Net 2D plans 6-7 for 256x256 slices)
  c.model.base = 32
  c.model.cap = 512

  c.train = ml_collections.ConfigDict()
  c.train.steps_per_epoch = 250  # nnU-Net's epoch
  c.train.batch_size = 12  # nnU-Net 2D's typical batch for 256x256 patches
  c.train.schedule = "poly"  # "poly": lr (1 - step/steps)^0.9 over the run; "constant"

  c.optim = ml_collections.ConfigDict()
  c.optim.sgd = ml_collections.ConfigDict(dict(
      learning_rate=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5))
  c.optim.adam = ml_collections.ConfigDict(dict(
      learning_rate=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=3e-5))
  # decoupled: AvaGradW's decay; normalizer: "reference" (lolemacs/avagrad) or "paper"
  c.optim.avagrad = ml_collections.ConfigDict(dict(
      learning_rate=10.0, b1=0.9, b2=0.999, eps=0.1, weight_decay=3e-5, decoupled=False,
      normalizer="reference"))

  c.augment = ml_collections.ConfigDict()  # nnU-Net's 2-D defaults (methods/avagrad/augment.py)
  c.augment.enabled = True
  c.augment.p_rotation, c.augment.rotation_deg = 0.2, 180.0
  c.augment.p_scale, c.augment.scale = 0.2, (0.7, 1.4)
  c.augment.p_noise, c.augment.noise_variance = 0.1, (0.0, 0.1)
  c.augment.p_blur, c.augment.blur_sigma = 0.2, (0.5, 1.0)
  c.augment.p_brightness, c.augment.brightness = 0.15, (0.75, 1.25)
  c.augment.p_contrast, c.augment.contrast = 0.15, (0.75, 1.25)
  c.augment.p_low_resolution, c.augment.low_resolution = 0.25, (0.5, 1.0)
  c.augment.p_gamma_inverted, c.augment.p_gamma, c.augment.gamma = 0.1, 0.3, (0.7, 1.5)
  c.augment.p_mirror = 0.5

  c.eval = ml_collections.ConfigDict()
  c.eval.metric = "sdice"  # "sdice" (CC-359) or "dice" (M&Ms)
  c.eval.tolerance_mm = 1.0

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 250  # calls between checkpoints
  common.add_shared(c, seed=None, steps_per_call=5, eval_batch_size=32)

  if variant in (None, "paper"):
    return c
  c.data.source = "demo_skull"
  c.data.train_site = "site_a_clean"
  c.data.patch = 32
  c.data.subjects_per_domain = 4
  c.data.test_subjects = 1
  c.model.stages, c.model.base, c.model.cap = 4, 8, 64
  c.train.batch_size = 8
  c.train.steps_per_epoch = 20
  c.runs = (("S-long", "sgd", 30), ("S-short", "sgd", 8), ("AG-short", "avagrad", 8),
            ("AG-long", "avagrad", 30))
  c.eval.tolerance_mm = 7.0  # about one in-plane voxel of the demo, as 1 mm is on CC-359
  c.engine.steps_per_call = 5
  c.engine.checkpoint_every = 10
  if variant == "smoke":
    c.data.patch = 16
    c.data.subjects_per_domain = 3
    c.data.max_target_volumes = 1
    c.model.stages, c.model.base, c.model.cap = 3, 2, 8
    c.train.batch_size = 2
    c.train.steps_per_epoch = 2
    c.runs = (("S-1", "sgd", 1), ("AG-2", "avagrad", 2))
    c.seeds = (0, 1)
    c.engine.steps_per_call = 1
    c.engine.checkpoint_every = 2
  return c
