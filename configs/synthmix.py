"""SIFA and SIFA + SynthMix for cross-modality cardiac segmentation (spec synthmix_sifa.md).

  python -m medda_jax.train --config=configs/synthmix.py:demo --workdir=runs/synthmix
  python -m medda_jax.train --config=configs/synthmix.py --workdir=runs/mmwhs \
      --config.data.dirs.mmwhs=/data/MM-WHS

The default is the paper's setting: MM-WHS 2017 (mr_train / ct_train, fixed 16 / 4 split),
MR -> CT and CT -> MR, 256 x 256 coronal slices, SIFA's reference networks and weights
(ngf 32, encoder width 16, PatchGAN ndf 64), batch 8, 20,000 iterations, 50-batch pools,
Adam 2e-4, SynthMix k = 8, ratio 0.5, lambda_I 0.1, 3 seeds. `demo` runs both methods on
the digit-stroke stand-in (real MNIST -> MNIST-M-style digits, 5 classes, 64 px) with the
same layer lists at a quarter of the width and a short schedule, sized to a 2-core CPU — a
demonstration, not a reproduction. `smoke` is a seconds-long run for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("mmwhs", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/synthmix.py")
  c = ml_collections.ConfigDict()
  c.method = "sifa"  # module in medda_jax/methods/
  c.variant = variant or "mmwhs"
  c.methods = ("sifa", "synthmix")  # baseline SIFA, and SIFA + SynthMix
  c.seeds = (0, 1, 2)

  c.data = ml_collections.ConfigDict()
  # "source->target"; domains: "mr", "ct" (MM-WHS under dirs.mmwhs), "mnist", "mnist_m"
  # (the embedded digit demo), or a name of data.user.
  c.data.directions = ("mr->ct", "ct->mr")
  c.data.dirs = ml_collections.ConfigDict({"mmwhs": ""})  # holds mr_train/ and ct_train/
  # Your own domains as name=path to a CSV of NIfTI volumes (columns image,label[,split],
  # split train or test); a direction names them like the built-in ones, results call them
  # by name.
  c.data.user = ()
  c.data.user_labels = "mmwhs"  # your labels: "mmwhs" (205/420/500/820) or "indices" (0-4)
  c.data.user_limits = (-2.0, 4.0)  # z-score clip limits of your domains (or data.limits.<name>)
  # Optional: a folder of SIFA's released test volumes (.npz, arr_0 image, arr_1 label) per
  # modality, scored instead of our 4 fixed test cases.
  c.data.sifa_npz = ml_collections.ConfigDict({"mr": "", "ct": ""})
  c.data.image_size = 256  # slices resized to image_size x image_size
  c.data.crop_margin = 0.1  # in-plane crop: label bounding box + this share of its side
  # Intensity limits after per-volume z-scoring, mapped to [-1, 1] (SIFA's constants).
  c.data.limits = ml_collections.ConfigDict({"mr": (-1.8, 4.4), "ct": (-2.8, 3.2)})
  c.data.split_seed = 0
  c.data.digits = ml_collections.ConfigDict()  # the demo's digit-stroke domains
  c.data.digits.train_per_domain = 2000  # training images per domain
  c.data.digits.test_images = 320  # target test images, scored in mosaics
  c.data.digits.mosaic = 4  # a test unit tiles mosaic x mosaic images (all classes in one)

  c.sifa = ml_collections.ConfigDict()  # cchen-cc/SIFA's settings (spec (b))
  c.sifa.num_classes = 5  # background, MYO, LAC, LVC, AA
  c.sifa.ngf = 32  # G and U width
  c.sifa.n_blocks = 9  # G's residual blocks
  c.sifa.encoder_features = 16  # E's first width (512 at the bottom)
  c.sifa.decoder_blocks = 4  # U's residual blocks
  c.sifa.decoder_dropout = 0.25  # the reference's decoder blocks keep 0.75 (always on)
  c.sifa.ndf = 64  # every PatchGAN
  c.sifa.pool_size = 50  # batches per pool (SIFA's batch-level pool)
  c.sifa.batch_size = 8
  c.sifa.iterations = 20000
  c.sifa.steps_per_call = 1  # iterations per jitted call (a lax.scan on GPU/TPU)
  c.sifa.checkpoint_every = 500  # calls
  c.sifa.learning_rate = 2e-4  # G, U, every discriminator (and the Inspector)
  c.sifa.beta1 = 0.5
  c.sifa.seg_learning_rate = 2e-4  # E, C, C_ll (the code feeds 2e-4; 1e-3 is only logged)
  c.sifa.lambda_cycle_s = 10.0
  c.sifa.lambda_cycle_t = 10.0
  c.sifa.weight_ll = 0.1  # deep supervision by C_ll (the seed's lambda_seg)
  c.sifa.weight_u = 0.1  # U's objective inside E's
  c.sifa.weight_adv_p = 0.1  # D_P on target predictions (the seed's lambda_adv)
  c.sifa.weight_adv_p_ll = 0.01
  c.sifa.weight_aux = 0.1  # D_S's auxiliary head on U(E(x_t))
  c.sifa.weight_decay = 1e-4  # L2 on E, C, C_ll

  c.synthmix = ml_collections.ConfigDict()  # the seed's policy; R: reasoned defaults
  c.synthmix.mask_k = 8  # k x k mask cells (ablation: 4, 32)
  c.synthmix.mask_ratio = 0.5  # P[cell shows the target appearance] (R)
  c.synthmix.lambda_inspector = 0.1
  c.synthmix.inspector_features = 64

  c.eval = ml_collections.ConfigDict()
  c.eval.overlay_slices = 4  # target slices in the overlay figure
  c.eval.grid_images = 8  # images per row of the translation grids

  common.add_shared(c, seed=None, steps_per_call=1, eval_batch_size=32)

  if variant in ("demo", "smoke"):
    c.data.directions = ("mnist->mnist_m",)
    c.data.image_size = 64
    c.sifa.ngf = 8
    c.sifa.encoder_features = 4
    c.sifa.ndf = 16
    c.synthmix.inspector_features = 16
    c.sifa.iterations = 300
    # One iteration per call (chosen when the CPU default unrolled a call's iterations and
    # one SIFA iteration took XLA about 40 s to compile; the demo's table was made with it).
    c.sifa.steps_per_call = 1
    c.sifa.checkpoint_every = 50
    c.sifa.pool_size = 10
  if variant == "smoke":
    c.data.image_size = 32
    c.data.digits.train_per_domain = 64
    c.data.digits.test_images = 32
    c.data.digits.mosaic = 2
    c.sifa.ngf = 4
    c.sifa.n_blocks = 1
    c.sifa.encoder_features = 2
    c.sifa.decoder_blocks = 1
    c.sifa.ndf = 4
    c.synthmix.inspector_features = 4
    c.synthmix.mask_k = 4
    c.sifa.batch_size = 4
    c.sifa.iterations = 4
    c.sifa.steps_per_call = 1
    c.sifa.checkpoint_every = 2
    c.sifa.pool_size = 2
    c.seeds = (0, 1)
    c.eval.overlay_slices = 2
    c.eval.grid_images = 3
  return c
