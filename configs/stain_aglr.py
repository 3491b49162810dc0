"""Stain-AgLr: stain-agnostic learning with consistency and stain-regeneration losses.

  python -m medda_jax.train --config=configs/stain_aglr.py --workdir=runs/stain_camelyon \
      --config.data.root=/path/to/camelyon17_v1.0 --config.data.train_lab=center_0  # paper
  python -m medda_jax.train --config=configs/stain_aglr.py:tupac --workdir=runs/stain_tupac \
      --config.data.root=/path/to/tupac_patches                                     # paper
  python -m medda_jax.train --config=configs/stain_aglr.py:demo --workdir=runs/stain_demo
  python -m medda_jax.train --config=configs/stain_aglr.py:smoke --workdir=runs/stain_smoke

The default is the paper's Camelyon17 setting (spec stain_aglr.md (b)): 256-px patches,
M_ft with 32-64-128-256-512 filters, Adam batch 64, lr 1e-2, x0.1 after 4 epochs without a
better validation loss, stop at 1e-5, lambda1 = 0.1 (L_Reg), lambda2 = 10 (L_Cons), HED-light
sigma = bias = 0.05, 10 seeds, the five variants of the ablation. `tupac` changes what the
paper changes for TUPAC16: 128-px patches, lr 5e-3, patience 15, class-balanced batches,
train on centre 1. `demo` runs the ablation on scikit-image's real IHC image (synthetic labs
and labels) scaled to a 2-core CPU; `smoke` runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "tupac", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/stain_aglr.py")
  c = ml_collections.ConfigDict()
  c.method = "stain_aglr"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = tuple(range(10))  # each: initialisation, batches, jitter draws, dropout
  # The ablation's rows: vanilla (no stain aug), hed_light, hed_reg (+ L_Reg), hed_cons
  # (+ L_Cons), stain_aglr (both).
  c.variants = ("vanilla", "hed_light", "hed_reg", "hed_cons", "stain_aglr")

  c.data = ml_collections.ConfigDict()
  # "camelyon17" (WILDS patch layout), "tupac" (labels.csv path,label,case), "demo" (no
  # download) or "none" (your data in data.user)
  c.data.source = "camelyon17"
  c.data.root = ""  # the dataset folder of data.source
  # Your own data, one 'name=path': <path>/<lab>/<patches> + <path>/labels.csv (path,label
  # [,lab]); results carry the name. Needs data.source = "none".
  c.data.user = ()
  c.data.train_lab = "center_0"  # the one lab trained (and validated) on
  c.data.test_labs = ()  # the unseen labs scored; () = every other lab in the data
  c.data.patch = 256  # patch side (read files are resized to it); divisible by 2^stages
  c.data.val_fraction = 0.2  # share of the training lab's patches held out for validation
  c.data.split_seed = 0
  c.data.cache_dir = ""  # demo only: where the demo patches are written; "" = <workdir>/cache
  c.data.demo_stride = 16  # demo only: tiling stride on the IHC image

  c.model = ml_collections.ConfigDict()
  c.model.features = (32, 64, 128, 256, 512)  # M_ft: filters per stage (2 convs + max-pool)
  c.model.decoder = (256, 128, 64, 32, 32)  # M_gen: filters per up-sampling stage
  c.model.hidden = 256  # M_cls hidden Dense width
  c.model.gen_skips = False  # skip connections M_ft -> M_gen (off: they leak the colours)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.learning_rate = 1e-2  # Adam; grid-searched in the paper (Camelyon)
  c.train.patience = 4  # epochs without a better validation loss before lr x factor
  c.train.factor = 0.1
  c.train.min_lr = 1e-5  # training stops when the lr has dropped to this
  c.train.max_epochs = 100  # a cap the paper does not state
  c.train.balanced = False  # equal class counts per batch (the paper's TUPAC sampler)
  c.train.geometric = True  # rotations by 90 degrees and flips (all models)

  c.loss = ml_collections.ConfigDict()
  c.loss.lambda_reg = 0.1  # lambda1, weight of L_Reg (variants with it)
  c.loss.lambda_cons = 10.0  # lambda2, weight of L_Cons (variants with it)
  c.loss.detach_raw_in_kl = False  # stop the gradient through p in KL(p || p_hat)

  c.hed = ml_collections.ConfigDict()  # HED-light: half-widths of the uniform draws
  c.hed.sigma = 0.05  # stain scale 1 + U(-sigma, sigma) per H, E, D channel
  c.hed.bias = 0.05  # stain shift U(-bias, bias) per channel
  c.hed.brightness = 0.05  # added U(-b, b) (brightness part; range not given by the paper)
  c.hed.contrast = 0.05  # factor 1 + U(-c, c) about the patch mean (contrast part)
  c.hed.noise = 0.02  # additive Gaussian noise, std U(0, noise) (part of the morphology set)
  # The rest of the morphology set, as read from ref. [25]'s HED-light table (not verified
  # against its code): Gaussian blur std U(0, blur) px on the twin; zoom 1 + U(-scale, scale)
  # and elastic deformation (smoothing std U(elastic_sigma) px, amplitude U(elastic_alpha))
  # on the host, before the twin is made, so x and x_hat share them. 0 switches one off.
  c.hed.blur = 0.1
  c.hed.scale = 0.2
  c.hed.elastic_alpha = (80.0, 120.0)
  c.hed.elastic_sigma = (9.0, 11.0)

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 1  # epochs between checkpoints (and at the end of a run)
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=128)

  if variant in (None, "paper"):
    return c
  if variant == "tupac":
    c.data.source = "tupac"
    c.data.train_lab = "centre_1"
    c.data.patch = 128
    c.train.learning_rate = 5e-3
    c.train.patience = 15
    c.train.balanced = True
    return c
  c.data.source = "demo"
  c.data.train_lab = "lab_source"
  c.data.patch = 32  # the IHC image is 512 px: 32-px tiles, one 1x1 map after 5 stages
  c.data.demo_stride = 24  # 273 source tiles (218 train, 55 val), 147 per unseen lab
  c.seeds = (0, 1, 2)
  c.model.features = (8, 16, 32, 64, 128)  # a quarter of the paper's widths
  c.model.decoder = (64, 32, 16, 8, 8)
  c.model.hidden = 64
  c.train.batch_size = 32  # 8 updates per epoch of the 218 training tiles
  c.train.max_epochs = 10  # the 2-core CPU budget: 80 updates per run, 15 runs
  c.train.patience = 2  # (4 in the paper) so that the lr schedule acts within 10 epochs
  c.engine.steps_per_call = 4
  c.engine.checkpoint_every = 5  # a checkpoint costs about as much as an epoch here
  if variant == "smoke":
    c.data.demo_stride = 32  # 16 x 16 tiles: few files
    c.seeds = (0, 1)
    c.model.features = (4, 4, 4, 4, 4)
    c.model.decoder = (4, 4, 4, 4, 4)
    c.model.hidden = 8
    c.train.batch_size = 16
    c.train.max_epochs = 2
    c.train.patience = 1
    c.engine.steps_per_call = 4
    c.engine.checkpoint_every = 2  # = the run: no checkpoint (they dominate a smoke run)
    c.engine.eval_batch_size = 64
  return c
