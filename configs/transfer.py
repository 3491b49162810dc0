"""Gradient transfer (MMTL, OCTL) and fine-tuning baselines for cross-site skull stripping.

  python -m medda_jax.train --config=configs/transfer.py --workdir=runs/cc359 \
      --config.data.source=cc359 --config.data.root=/path/to/cc359      # paper setting
  python -m medda_jax.train --config=configs/transfer.py:demo --workdir=runs/transfer_demo
  python -m medda_jax.train --config=configs/transfer.py:smoke --workdir=/tmp/smoke

The default is the paper's CC359 protocol (spec gradient_transfer.md §2.2-2.7: U-Net 16
filters, batch 16, 60 epochs x 100 steps, lr 1e-3 -> 1e-4 at epoch 45, the 30 ordered site
pairs, budgets 90/270/540/1080 slices, 3 seeds). `demo` runs the same pipeline on the
embedded skull-stripping demo (one real head MRI, synthetic subjects and scanner sites)
scaled to a 2-core CPU; `smoke` runs in seconds for the tests.
"""

import itertools

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

CC359_SITES = ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")


VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/transfer.py")
  c = ml_collections.ConfigDict()
  c.method = "gradient_transfer"  # module in medda_jax/methods/
  c.variant = variant or "paper"  # which preset this is (recorded in the results)
  # Seeds: each draws the target subjects of every budget and the fine-tuning batches
  # (and, with pretrain_per_seed, the source model's initialisation and batches).
  c.seeds = (0, 1, 2)
  c.pretrain_per_seed = True  # one source model per seed (False: one shared by all seeds)
  # Fine-tune only: the workdir of an earlier run of this method (or one of its
  # checkpoints/pretrain_<optimizer>_<site>_seed<seed>/ folders); its source models are read
  # instead of pre-trained, so a pair's source site need not be in the data (then MMTL,
  # which mixes in source batches, and the source-retention scores are not available).
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  # "cc359" (published layout), "demo_skull" (embedded, no download) or "none" (data.user only)
  c.data.source = "cc359"
  # Your own sites, 'name=path': a Decathlon-layout folder with any task name (one site) or a
  # CSV manifest image,label[,subject][,site][,modality] (one site, or <name>_<site> per value
  # of its site column). Name them in data.pairs; the built-in source is read only when a
  # pair names one of its sites.
  c.data.user = ()
  c.data.user_modality = ""  # CSV manifests without a modality column: "CT" or "MR"
  # Your CT sites: Hounsfield window scaled to [0, 1] (abdominal soft tissue, level 40 /
  # width 400); MR sites are scaled as the CC359 sites (1st-99th percentile to [0, 1]).
  c.data.ct_window = (-160.0, 240.0)
  c.data.root = ""  # CC359 folder (meta.csv + images/ + masks/, or Original/ + Silver-standard/)
  # cc359: "files" reads a published layout under root; "tfds" reads the dataset
  # `python -m medda_jax.data.builders.build cc359` prepared in root (a TFDS data dir).
  c.data.layout = "files"
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache
  c.data.spacing = (1.0, 1.0, 1.0)  # cc359: resampling target in mm (reference code: 1, .95, .95)
  c.data.crop = 256  # training crop side (demo: also the slice side); divisible by 8
  c.data.subjects_per_domain = 6  # demo only: synthetic subjects per site
  c.data.test_subjects = 10  # test subjects held out per site (paper split: ~45/5/10)
  c.data.split_seed = 0  # seed of the per-site train/test split (and of the demo's build)
  # (source, target) site pairs; the paper uses all 30 ordered pairs of the six sites.
  c.data.pairs = tuple(itertools.permutations(CC359_SITES, 2))

  # Target budgets (name, target subjects, slice step): 90 slices = every 3rd slice of one
  # subject, 270 = one subject, 540 = two, 1080 = four (paper §3).
  c.budgets = (("90", 1, 3), ("270", 1, 1), ("540", 2, 1), ("1080", 4, 1))
  c.methods = ("fta", "ftf", "l2sp", "spottune", "octl", "mmtl")  # columns of the tables
  c.optimizers = ("sgd", "adam")  # rows: every method runs with each

  c.model = ml_collections.ConfigDict()
  c.model.features = 16  # n_filters_init of the residual U-Net (16-32-64-128)

  c.batch_size = 16  # slices per step (MMTL: target + source)
  for stage in ("pretrain", "finetune"):
    s = ml_collections.ConfigDict()
    s.epochs = 60  # "epochs" of steps_per_epoch steps (the reference code's batches_per_epoch)
    s.steps_per_epoch = 100
    s.learning_rate = 1e-3  # initial learning rate (restarted for every fine-tuning run)
    s.decay_epoch = 45  # lr x decay_factor from this epoch on
    s.decay_factor = 0.1
    c[stage] = s

  c.optim = ml_collections.ConfigDict()  # pre-training and the fresh fine-tuning optimizers
  c.optim.sgd_momentum = 0.9  # reference code: SGD(momentum=0.9, nesterov=True)
  c.optim.sgd_nesterov = True
  c.optim.adam_b1 = 0.9  # torch Adam defaults
  c.optim.adam_b2 = 0.999
  c.optim.adam_eps = 1e-8

  c.octl = ml_collections.ConfigDict()  # optimizer-state continuation (paper Table 1)
  c.octl.sgd_momentum = 0.99  # continued plain (non-Nesterov) momentum
  c.octl.adam_b1 = 0.99  # paper; the released code falls back to 0.9
  c.octl.adam_count = 100  # Adam's step count at the start of fine-tuning ("step 100")

  c.mmtl = ml_collections.ConfigDict()
  c.mmtl.schedule = "code"  # "code": n_t = min(e//4 + 1, B); "paper_linear": int(e/E * B)

  c.ftf = ml_collections.ConfigDict()
  c.ftf.trainable_prefixes = ("init_",)  # FTF trains the layers before the first down-sampling

  c.l2sp = ml_collections.ConfigDict()
  c.l2sp.alpha = 0.01  # weight of ||theta - theta_source||^2 (not given in the paper)

  c.spottune = ml_collections.ConfigDict()
  c.spottune.penalty = 0.005  # lambda on the number of fine-tuned blocks (assumption)
  c.spottune.temperature = 0.1  # Gumbel-softmax temperature (assumption)
  c.spottune.policy_features = 8  # width of the small policy CNN

  c.eval = ml_collections.ConfigDict()
  c.eval.tolerance_mm = 1.0  # surface Dice tolerance

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 25  # calls between checkpoints

  # No single seed: every run repeats over `seeds`. eval.batch_size (slices per prediction
  # call) is a second name of engine.eval_batch_size.
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=32)
  common.alias(c, "eval.batch_size", "engine.eval_batch_size")

  if variant in (None, "paper"):
    return c
  c.data.source = "demo_skull"
  c.data.crop = 32
  c.data.subjects_per_domain = 5
  c.data.test_subjects = 2
  c.data.pairs = (("site_a_clean", "site_f_inverted"),)
  c.model.features = 8
  c.batch_size = 8
  c.budgets = (("small", 1, 4), ("medium", 1, 1), ("large", 3, 1))
  c.pretrain_per_seed = False
  c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 20, 20, 15
  c.finetune.epochs, c.finetune.steps_per_epoch, c.finetune.decay_epoch = 8, 8, 6
  c.mmtl.schedule = "paper_linear"  # the code schedule assumes 60 epochs
  c.eval.tolerance_mm = 7.0  # about one in-plane voxel of the demo (7 mm), as 1 mm is on CC359
  c.engine.steps_per_call = 1
  c.engine.checkpoint_every = 100  # calls: pre-training is checkpointed, fine-tuning runs are not
  if variant == "smoke":
    c.data.crop = 16
    c.data.subjects_per_domain = 3
    c.data.test_subjects = 1
    c.seeds = (0, 1)
    c.budgets = (("small", 1, 2), ("large", 2, 1))
    c.model.features = 2
    c.batch_size = 4
    c.spottune.policy_features = 2
    c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 2, 4, 1
    c.finetune.epochs, c.finetune.steps_per_epoch, c.finetune.decay_epoch = 2, 1, 1
    c.engine.checkpoint_every = 3  # pre-training is checkpointed, the 2-step runs are not
  return c
