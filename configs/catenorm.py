"""CateNorm: categorical normalisation for robust segmentation (Xiao et al., DART 2022).

  python -m medda_jax.train --config=configs/catenorm.py --workdir=runs/prostate \
      --config.data.root=/data/SAML_prostate                      # paper setting (prostate)
  python -m medda_jax.train --config=configs/catenorm.py --workdir=runs/btcv \
      --config.data.source=btcv --config.data.root=/data/BTCV --config.loss.dice_weight=0.5
  python -m medda_jax.train --config=configs/catenorm.py:demo --workdir=runs/catenorm_demo
  python -m medda_jax.train --config=configs/catenorm.py:smoke --workdir=runs/catenorm_smoke

The default is the paper's single-domain prostate protocol: the SAML site folders under
data.root (ISBI = RUNMC, ISBI_1.5 = BMC, I2CVB = HCRUDB), 384 x 384 slices with their two
neighbours as channels, 9000 iterations of batch 4, Adam 1e-3, the code's plateau schedule,
Dice loss only, and the methods of Table 1: BN, IN, GN, CateNorm with CNRB block 1 and
blocks 1-4 (stage 1 = the BN run, stage 2 = Algorithm 1 from it). `mode="multi"` trains
one network on all sites (batch 6) and adds DSBN. `demo` runs the same pipeline on real
brain atlases (Colin27 + AAL, MNI152) with synthetic scanner styles as sites; `smoke`
runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/catenorm.py")
  c = ml_collections.ConfigDict()
  c.method = "catenorm"
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # every run repeats per seed (initialisation, batches, augmentation)
  # "single": one network per site (paper Table 1); "multi": one network on all sites
  # (Table 2), scored per site; DSBN needs "multi".
  c.mode = "single"
  # Columns of the table: bn, in, gn, dsbn (multi only), catenorm_block1, catenorm_block1-4.
  # bn_continued: the BN run trained on for stage 2's iterations (a control of equal length,
  # not in the paper)
  c.methods = ("bn", "bn_continued", "in", "gn", "catenorm_block1", "catenorm_block1-4")
  # False: stage 1 is the BN run of the same site and seed (paper: "pretrained model"),
  # stage 2 starts from it; True: stage 2 from random weights (the released code's default).
  c.stage2_from_scratch = False

  c.data = ml_collections.ConfigDict()
  c.data.source = "prostate"  # "prostate" (SAML layout), "btcv", "demo_brain" or "none"
  c.data.root = ""  # prostate: folder of the site folders; btcv: folder of img/ and label/
  # prostate: the sites used (release, code names or letters); btcv: ignored (one site)
  c.data.sites = ("RUNMC", "BMC", "HCRUDB")
  # prostate: the per-site list of cases of the reference layout ("" = every case found;
  # a name such as "all_list.txt" must then exist in every site folder)
  c.data.split_file = ""
  # Your own sites, 'name=path' (a Decathlon-layout folder or a CSV manifest, see
  # medda_jax/data/user_seg.py); multi-class labels are kept as they are.
  c.data.user = ()
  c.data.user_modality = ""  # CSV manifests without a modality column: "CT" or "MR"
  c.data.ct_window = (-125.0, 275.0)  # CT sites: the paper's HU clip, then z-score
  c.data.cache_dir = ""  # preprocessed-volume cache; "" = <workdir>/cache (the demo: per user)
  c.data.image_size = 384  # in-plane side (divisible by 16)
  c.data.test_volumes = 6  # held out per site for the test (the paper: one fold of 5)
  c.data.val_volumes = 3  # held out per site for the val-selected model
  c.data.split_seed = 0
  c.data.subjects_per_anatomy = 5  # demo only: volumes per real brain
  c.data.other_slice_probability = 0.0  # slices outside the mask's z-range kept (prostate code: 0)

  c.model = ml_collections.ConfigDict()
  c.model.widths = (32, 64, 128, 256, 512)

  c.loss = ml_collections.ConfigDict()
  c.loss.dice_weight = 1.0  # lambda: 1.0 prostate (Dice only), 0.5 abdomen (paper Table 5)

  c.train = ml_collections.ConfigDict()
  c.train.iterations = 9000  # per stage (the code: 10 epochs x 900 iterations)
  c.train.batch_size = 4  # 6 in multi mode (paper)
  c.train.learning_rate = 1e-3
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.clip_value = 0.1  # CateNorm half-step only (code)
  c.train.plateau_every = 50  # iterations per plateau window (code)
  c.train.plateau_factor = 0.5
  c.train.plateau_patience = 5
  c.train.min_lr = 1e-5
  c.train.flip = True  # horizontal flip (prostate; off for abdomen)
  c.train.rotation_degrees = 15.0  # random rotation range (0 = off)

  c.eval = ml_collections.ConfigDict()
  c.eval.every_calls = 150  # validation (val-selected model) every this many calls

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 150  # calls
  common.add_shared(c, seed=None, steps_per_call=4, eval_batch_size=16)

  if variant in (None, "paper"):
    return c
  c.data.source = "demo_brain"
  c.data.sites = ("colin27_t1w", "mni152_t2w_like", "mni152_lowres_noisy")
  c.data.image_size = 32
  c.data.subjects_per_anatomy = 4
  c.data.test_volumes = 1
  c.data.val_volumes = 1
  c.model.widths = (8, 16, 32, 64, 128)
  c.loss.dice_weight = 0.5  # multi-class, as the paper's abdominal setting
  c.train.iterations = 80
  c.train.plateau_every = 10
  c.eval.every_calls = 20
  # One step per call (chosen when the CPU default unrolled a chunk, compiled in time linear
  # in its steps; the demo's table was made with it).
  c.engine.steps_per_call = 1
  c.engine.checkpoint_every = 40
  c.engine.eval_batch_size = 64
  if variant == "smoke":
    c.seeds = (0, 1)
    c.methods = ("bn", "bn_continued", "catenorm_block1")
    # both brains of one style; the demo collection of MetaMedSeg's smoke run (shared cache)
    c.data.sites = ("all_t1w",)
    c.data.image_size = 32
    c.data.subjects_per_anatomy = 2
    c.model.widths = (4, 4, 4, 4, 4)
    c.train.iterations = 4
    c.train.plateau_every = 2
    c.train.rotation_degrees = 0.0
    c.eval.every_calls = 2
    c.engine.steps_per_call = 1
    c.engine.checkpoint_every = 2
  return c
