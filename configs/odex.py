"""ODEx: task-agnostic continual hippocampus segmentation (out-of-distribution detection +
model expansion), with sequential fine-tuning, EWC, LwF and joint training.

  python -m medda_jax.train --config=configs/odex.py --workdir=runs/odex \
      --config.data.source=msd --config.data.root=/path/to/decathlon       # paper setting
  python -m medda_jax.train --config=configs/odex.py:demo --workdir=runs/odex_demo
  python -m medda_jax.train --config=configs/odex.py:smoke --workdir=/tmp/odex_smoke

The default follows the paper (spec odex_continual.md (b)) given the Decathlon's
hippocampus: 5 progressively transformed stages; a 3-D U-Net trained per stage with
Dice + BCE and nnU-Net's SGD (Nesterov 0.99, lr 0.01 x poly 0.9, weight decay 3e-5);
features = channel means of the first normalisation layer's input; threshold xi = 2 x the
mean normalised in-distribution distance. `demo` runs on DEMO DATA (real AAL hippocampus
labels on Colin27 / MNI152, synthetic subjects and drift) scaled to a 2-core CPU; `smoke`
runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/odex.py")
  c = ml_collections.ConfigDict()
  c.method = "odex"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # each: model init and batches; mean +- std over them
  # the methods run over the stream, in this order ("odex", "sequential", "ewc", "lwf", "joint")
  c.methods = ("odex", "sequential", "ewc", "lwf", "joint")

  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"  # "demo" (embedded, no download) or "msd" (Decathlon Task04)
  c.data.root = ""  # msd: the Decathlon root holding Task04_Hippocampus/
  # Your own stream, 'name=path' per stage in order: a CSV manifest image,label of NIfTI
  # files (or a Decathlon-layout folder); replaces data.source when given.
  c.data.user = ()
  c.data.stages = 5  # demo / msd: stages of the drifting stream
  c.data.crop = (40, 56, 40)  # volumes centre-cropped / padded to this (voxels)
  c.data.train_subjects = 24  # demo: training crops per stage
  c.data.test_subjects = 8  # demo: test crops per stage
  c.data.test_fraction = 0.2  # msd / your data: share of each stage's cases held out
  c.data.split_seed = 0  # the demo's subjects, the stage split of the cases

  c.model = ml_collections.ConfigDict()
  c.model.features = 32  # channels at the finest level (nnU-Net: 32)
  c.model.levels = 4  # resolutions, bottleneck included

  c.train = ml_collections.ConfigDict()
  c.train.steps = 5000  # updates per stage (nnU-Net: 200 epochs; see docs for the mapping)
  c.train.batch_size = 2  # nnU-Net 3-D full resolution
  c.train.optimizer = "sgd"  # "sgd" (nnU-Net) or "adam"
  c.train.learning_rate = 0.01
  c.train.momentum = 0.99  # SGD Nesterov
  c.train.weight_decay = 3e-5

  c.odex = ml_collections.ConfigDict()
  # "auto": xi = 2 x mean normalised in-distribution distance of the closest model (paper);
  # a number: a fixed threshold on the normalised distance
  c.odex.threshold = "auto"
  c.odex.rel_eps = 1e-6
  # test-time routing: "mean" = the summed distance over a model's history divided by its
  # length; "sum" = the paper's plain sum (favours the oldest model, whose history is shortest)
  c.odex.routing = "mean"  # Sigma + rel_eps * trace(Sigma) / d * I before inverting

  c.ewc = ml_collections.ConfigDict()
  c.ewc.lam = 0.4  # penalty weight lambda (Lifelong-nnUNet's default)
  c.lwf = ml_collections.ConfigDict()
  c.lwf.lam = 1.0  # distillation weight
  c.lwf.temperature = 2.0  # LwF's temperature

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 50  # calls between checkpoints within a stage
  common.add_shared(c, seed=None, steps_per_call=10, eval_batch_size=8)

  if variant in (None, "paper"):
    c.data.source = "msd"
    return c
  # a 2-core CPU: four methods x four stages x three seeds; joint
  # training is one more run per seed (--config.methods=...,"joint")
  c.methods = ("odex", "sequential", "ewc", "lwf")
  c.data.stages = 4
  c.data.crop = (16, 32, 24)  # 2 mm voxels around one hippocampus
  c.data.train_subjects = 16
  c.data.test_subjects = 6
  c.model.features = 4
  c.model.levels = 3
  c.train.steps = 50
  # the demo's Fisher entries are ~1e-6 (few short stages): 0.4 would leave EWC equal to
  # sequential fine-tuning; 1000 makes the penalty comparable with the segmentation loss
  c.ewc.lam = 1000.0
  c.train.batch_size = 2
  c.train.optimizer = "adam"  # SGD 0.99 needs nnU-Net's thousands of steps
  c.train.learning_rate = 3e-3
  c.engine.steps_per_call = 10
  # no checkpoint inside a 50-step stage: a killed stage is redone from the pool file (the
  # same result); pool files are written after every stage
  c.engine.checkpoint_every = 5
  if variant == "smoke":
    c.methods = ("odex", "sequential", "ewc", "lwf", "joint")
    c.seeds = (0, 1)
    c.data.stages = 3
    c.data.crop = (8, 16, 16)
    c.data.train_subjects = 4
    c.data.test_subjects = 2
    c.model.features = 2
    c.model.levels = 2
    c.train.steps = 4
    c.train.batch_size = 2
    c.engine.steps_per_call = 1
    c.engine.checkpoint_every = 4  # none inside a stage (the kill test turns them on)
    c.engine.eval_batch_size = 4
  return c
