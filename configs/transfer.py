"""Gradient transfer (MMTL, OCTL) and fine-tuning baselines for cross-site skull stripping
and multi-site prostate segmentation.

  python -m medda_jax.train --config=configs/transfer.py --workdir=runs/cc359 \
      --config.data.source=cc359 --config.data.root=/path/to/cc359      # paper setting
  python -m medda_jax.train --config=configs/transfer.py:prostate --workdir=runs/prostate \
      --config.data.root=/path/to/SAML_prostate
  python -m medda_jax.train --config=configs/transfer.py:demo --workdir=runs/transfer_demo
  python -m medda_jax.train --config=configs/transfer.py:smoke --workdir=/tmp/smoke

The default (`paper`) is the paper's CC359 protocol, Tables 2 and 3 with the bounds of §3.1
(spec gradient_transfer.md §2.2-2.7: U-Net 16 filters, batch 16, 60 epochs x 100 steps,
lr 1e-3 -> 1e-4 at epoch 45, the 30 ordered site pairs, budgets 90/270/540/1080 slices,
3 seeds; lower bound 'none' = source model, upper bound 'upper' = trained on all target
training data). Best-on-validation checkpoints with the paper's 45/5/10 split:
--config.data.val_subjects=5 --config.eval.select=best_val. `prostate` is Table 4 (see
`_prostate`). `demo` runs the CC359 pipeline on the embedded skull-stripping demo (one
real head MRI, synthetic subjects and scanner sites) scaled to a 2-core CPU, reproducing
no table; `smoke` and `prostate_smoke` run in seconds for the tests.
`cxr` is the paper's chest X-ray classification transfer (Table 5, CheXpert <->
ChestX-ray14; `cxr_smoke` its test-sized sibling): see `_cxr` at the end of this file.
"""

import itertools

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

CC359_SITES = ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")


VARIANTS = ("paper", "demo", "smoke", "prostate", "prostate_smoke")
CXR_VARIANTS = ("cxr", "cxr_smoke")  # chest X-ray classification (`_cxr` below)
VARIANTS += CXR_VARIANTS


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
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache (the demo: per user)
  c.data.spacing = (1.0, 1.0, 1.0)  # cc359: resampling target in mm (reference code: 1, .95, .95)
  c.data.crop = 256  # training crop side (demo: also the slice side); divisible by 8
  c.data.subjects_per_domain = 6  # demo only: synthetic subjects per site
  c.data.test_subjects = 10  # test subjects held out per site (paper split: ~45/5/10)
  # Validation subjects per site (paper: 5), taken from training; the test subjects stay
  # the same. Needed by eval.select='best_val'.
  c.data.val_subjects = 0
  c.data.channels = 1  # adjacent slices as input channels (prostate: 3), odd
  # Slices training draws from: "all", or "organ_range" (the mask's z-range plus each
  # other slice with probability 0.1, the prostate reference code's sampling).
  c.data.training_slices = "all"
  c.data.image_size = 384  # prostate only: in-plane side after resizing
  c.data.split_seed = 0  # seed of the per-site train/test split (and of the demo's build)
  # (source, target) site pairs; the paper uses all 30 ordered pairs of the six sites.
  c.data.pairs = tuple(itertools.permutations(CC359_SITES, 2))

  # Target budgets (name, target subjects, slice step[, slices]): 90 slices = every 3rd
  # slice of one subject, 270 = one subject, 540 = two, 1080 = four (paper §3). A 4th
  # entry draws that many slices (per seed) of the subjects' training slices.
  c.budgets = (("90", 1, 3), ("270", 1, 1), ("540", 2, 1), ("1080", 4, 1))
  c.methods = ("fta", "ftf", "l2sp", "spottune", "octl", "mmtl")  # columns of the tables
  c.optimizers = ("sgd", "adam")  # rows: every method runs with each
  # Column 'upper': a model trained on all of the target's training subjects (the target
  # site's source model; no extra training when every target is also a source).
  c.upper_bound = True

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
  c.eval.metric = "sdice"  # the tables' score: "sdice" (CC359) or "dice" (prostate)
  # "largest_component": keep the largest 3-D connected component of each prediction;
  # "d7" (prostate, spec D7): first zero the slices whose largest 2-D component is under a
  # threshold learned on the target's validation subjects (needs data.val_subjects). The
  # Dice without post-processing is recorded as dice_raw.
  c.eval.postprocess = "none"
  # Fine-tuned model reported: "last" (spec D6) or "best_val" (best eval.metric on the
  # target's validation subjects, checked every epoch; needs data.val_subjects).
  c.eval.select = "last"

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 25  # calls between checkpoints

  # No single seed: every run repeats over `seeds`. eval.batch_size (slices per prediction
  # call) is a second name of engine.eval_batch_size.
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=32)
  common.alias(c, "eval.batch_size", "engine.eval_batch_size")

  if variant in (None, "paper"):
    return c
  if variant in CXR_VARIANTS:  # the classification path: its own config, see _cxr below
    return _cxr(variant)
  if variant in ("prostate", "prostate_smoke"):
    return _prostate(c, variant)
  c.upper_bound = False  # the demo's target is no source: the bound would cost a training
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


# --------------------------------------------------------------------------- prostate
PROSTATE_SITES = ("RUNMC", "BMC", "HCRUDB", "UCL", "BIDMC", "HK")  # SAML sites A..F


def _prostate(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """`prostate`: the paper's multi-site prostate MRI transfer, Table 4 (Dice, Adam; FTA,
  FTF, L2SP, ST, OCTL, MMTL; 10/20/40 target slices; 3 seeds; no fine-tuning = 'none'),
  with the upper bound beside it.

  Each of the six SAML sites is a target once, its source the other five pooled
  ('RUNMC+BMC+...'). As the reference code (spec §2.4, D4, D7): 3 adjacent slices as
  channels, 384 x 384 slices (no crop), per-volume z-score, training on the prostate's
  z-range plus 10 % of the other slices, lr 1e-4 (the paper says "the same
  hyper-parameters" as CC359, 1e-3; its released configs use 1e-4), Dice per test
  subject after the D7 post-processing (slices with only small blobs zeroed, by a
  threshold learned on 2 validation subjects of the target; then the largest 3-D
  component kept). Not given, chosen here: 4 test and 2 validation subjects per site,
  target budgets of 1, 2 and 4 subjects from which 10, 20, 40 slices are drawn per
  seed.
  `prostate_smoke`: toy sizes for the tests (any small folder in the six-site layout
  with RUNMC, BMC and HCRUDB); its numbers mean nothing.
  """
  c.data.source = "prostate"
  c.data.image_size = 384
  c.data.crop = 384  # the whole slice
  c.data.channels = 3
  c.data.training_slices = "organ_range"
  c.data.test_subjects = 4
  c.data.val_subjects = 2  # the D7 threshold's validation subjects
  c.data.pairs = tuple(("+".join(s for s in PROSTATE_SITES if s != t), t)
                       for t in PROSTATE_SITES)
  c.budgets = (("10", 1, 1, 10), ("20", 2, 1, 20), ("40", 4, 1, 40))
  c.optimizers = ("adam",)  # Table 4 (the reference code has Adam configs only)
  c.pretrain.learning_rate = c.finetune.learning_rate = 1e-4
  c.eval.metric = "dice"
  c.eval.postprocess = "d7"
  if variant == "prostate":
    return c
  c.data.image_size = c.data.crop = 16
  c.data.test_subjects = 1
  c.data.val_subjects = 1
  c.eval.select = "best_val"
  c.data.pairs = (("RUNMC+BMC", "HCRUDB"),)
  c.budgets = (("4", 1, 1, 4),)
  c.methods = ("fta", "octl", "mmtl")
  c.seeds = (0,)
  c.model.features = 2
  c.batch_size = 4
  c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 2, 2, 1
  c.finetune.epochs, c.finetune.steps_per_epoch, c.finetune.decay_epoch = 2, 1, 1
  c.pretrain.learning_rate = c.finetune.learning_rate = 1e-2  # a few steps that move
  c.mmtl.schedule = "paper_linear"  # the code schedule assumes 60 epochs
  c.engine.steps_per_call = 1
  c.engine.checkpoint_every = 4  # pre-training once at its end (OCTL reads it); not the runs
  return c


# --------------------------------------------------------------------------- chest X-rays
def _cxr(variant: str) -> ml_collections.ConfigDict:
  """`cxr`: the paper's chest X-ray transfer, Table 5 (mean AUC, CheXpert -> ChestX-ray14
  and ChestX-ray14 -> CheXpert; FTA, FTF, L2SP, OCTL, MMTL; 128/256/512/1024 target
  images; 3 seeds):

    python -m medda_jax.train --config=configs/transfer.py:cxr --workdir=runs/cxr \
        --config.data.dirs.chexpert=/path/to/CheXpert-v1.0-small \
        --config.data.dirs.chestxray14=/path/to/ChestX-ray14

  Paper (§3.3): DenseNet-121, Adam lr 1e-4 for pre-training and fine-tuning, a new head
  for the target labels, random train/test splits, 3 seeds; the rest of its setting is
  shared with the segmentation experiments (batch 16, 60 epochs, lr x0.1 at epoch 45).
  Not given, chosen here (spec §2.5): 224 x 224 grayscale input, training from scratch
  (no ImageNet weights), CheXpert uncertain -> 0 and frontal views only, a 90/10
  patient-level split, 60 x 500 pre-training steps, FTF = stem + first dense block.
  `cxr_smoke`: a tiny DenseNet and toy sizes for the tests (any two small folders in the
  published layouts); its numbers mean nothing.
  """
  c = ml_collections.ConfigDict()
  c.method = "gradient_transfer"
  c.task = "classification"  # routes medda_jax.methods.gradient_transfer to classification.py
  c.variant = variant
  c.seeds = (0, 1, 2)  # each: its source models, target-image draws and batches

  c.data = ml_collections.ConfigDict()
  c.data.dirs = ml_collections.ConfigDict()
  c.data.dirs.chexpert = ""  # CheXpert release folder (train.csv, valid.csv, train/, valid/)
  c.data.dirs.chestxray14 = ""  # ChestX-ray14 folder (Data_Entry_2017.csv, the lists, images)
  # Your own datasets, 'name=path': a CSV manifest path[,patient_id],<label>,... (1, 0, -1
  # uncertain, blank unlabelled) or a class-folder root (one label per class); name them in
  # data.pairs, with each other or with the two published datasets.
  c.data.user = ()
  c.data.pairs = (("chexpert", "chestxray14"), ("chestxray14", "chexpert"))  # (source, target)
  c.data.image_size = 224  # square grayscale input (not given in the paper)
  c.data.uncertain = "zeros"  # CheXpert -1 labels: "zeros" (U-Zeros), "ones" or "ignore"
  c.data.frontal_only = True  # CheXpert: frontal views (ChestX-ray14 has frontal views only)
  c.data.test_fraction = 0.1  # patient-level random split of each dataset (all its images)
  c.data.max_test_images = 0  # evaluate on at most this many test images (0 = all)
  c.data.split_seed = 0
  c.data.cache_dir = ""  # decoded test images (uint8); "" = <workdir>/cache
  c.data.read_threads = 8  # grain threads decoding training batches and test images

  c.budgets = (128, 256, 512, 1024)  # target training images (paper Table 5 rows)
  # Columns of Table 5; SpotTune (ST) has no DenseNet version here yet.
  c.methods = ("fta", "ftf", "l2sp", "octl", "mmtl")

  c.model = ml_collections.ConfigDict()  # DenseNet-121 (torchvision layout)
  c.model.block_sizes = (6, 12, 24, 16)
  c.model.growth_rate = 32
  c.model.bn_size = 4
  c.model.init_features = 64

  c.batch_size = 16  # images per step (MMTL: target + source)
  for stage, steps in (("pretrain", 500), ("finetune", 100)):
    s = ml_collections.ConfigDict()
    s.epochs = 60
    s.steps_per_epoch = steps
    s.learning_rate = 1e-4  # paper §3.3, pre-training and fine-tuning
    s.decay_epoch = 45
    s.decay_factor = 0.1
    c[stage] = s

  c.optim = ml_collections.ConfigDict()  # Adam (torch defaults) for every fresh state
  c.optim.adam_b1 = 0.9
  c.optim.adam_b2 = 0.999
  c.optim.adam_eps = 1e-8
  c.octl = ml_collections.ConfigDict()  # the backbone continues; the new head is fresh
  c.octl.adam_b1 = 0.99
  c.octl.adam_count = 100
  c.mmtl = ml_collections.ConfigDict()
  c.mmtl.schedule = "code"  # "code": n_t = min(e//4 + 1, B); "paper_linear": int(e/E * B)
  c.ftf = ml_collections.ConfigDict()
  c.ftf.trainable_prefixes = ("conv0", "norm0", "denseblock1")  # backbone layers FTF trains
  c.l2sp = ml_collections.ConfigDict()
  c.l2sp.alpha = 0.01  # on the pre-trained parameters only (not given in the paper)

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 25  # calls between checkpoints
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=64)
  if variant == "cxr":
    return c
  c.seeds = (0, 1)
  c.data.image_size = 32
  c.data.test_fraction = 0.3
  c.data.read_threads = 1
  c.budgets = (4, 8)
  c.model.block_sizes = (1, 1)
  c.model.growth_rate = 4
  c.model.bn_size = 2
  c.model.init_features = 8
  c.batch_size = 4
  c.pretrain.epochs, c.pretrain.steps_per_epoch, c.pretrain.decay_epoch = 2, 3, 1
  c.finetune.epochs, c.finetune.steps_per_epoch, c.finetune.decay_epoch = 2, 2, 1
  c.pretrain.learning_rate = c.finetune.learning_rate = 1e-2  # a few steps that move
  c.engine.steps_per_call = 1
  c.engine.checkpoint_every = 4  # pre-training is checkpointed, the 4-step runs are not
  c.engine.eval_batch_size = 16
  return c
