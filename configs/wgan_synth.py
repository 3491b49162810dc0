"""Class-wise WGAN synthetic augmentation across hospitals (breast ultrasound).

  python -m medda_jax.train --config=configs/wgan_synth.py --workdir=runs/busi \
      --config.data.source_dir=/data/Dataset_BUSI_with_GT \
      --config.data.target_dirs.breast=/data/BrEaST-Lesions_USG-images_and_masks
  python -m medda_jax.train --config=configs/wgan_synth.py:demo --workdir=runs/wgan_demo
  python -m medda_jax.train --config=configs/wgan_synth.py:smoke --workdir=runs/smoke
  python -m medda_jax.train --config=configs/wgan_synth.py --workdir=runs/ours \
      --config.data.source=ourhospital=/data/our_us \
      --config.data.targets="('clinic_b=/data/clinic_b.csv',)" \
      --config.data.positive_classes="('benign','normal')" \
      --config.data.negative_classes="('malignant',)"

Variants and the paper table each reproduces (spec wgan_synth_aug.md; "Egypt" = BUSI, or
BreastMNIST at 128 px with `data.source=breastmnist`; "Poland" = BrEaST):

  paper (default)  Tables 2-5: the ratio experiment. 128x128 greyscale, one WGAN per class
                   (RMSprop 5e-5 as torch's, n_critic 5, clipping 0.01, spectral norm,
                   batch 64), ResNet-50 / ViT-B/16 / CNN-Transformer on 100 real Egypt
                   images plus 0, 25, 50, 75 or 100 synthetic ones, tested on 100 held-out
                   Egypt and 100 Poland images, 5 seeds.
  table1           Table 1, first row: ResNet-50 on all real Egypt images (80/20: 624
                   trained, 156 tested), tested on Egypt's 156 and on all of Poland.
  table1_poland    Table 1, second row: the Poland -> Egypt direction, ResNet-50 on 80 % of
                   BrEaST (205), tested on its other 51 and on all of BUSI. Needs
                   data.source_dir (BrEaST) and data.target_dirs.busi.
  table6_egypt     Table 6, first column "Real (624) -> Egypt": `table1` with all three
                   classifiers.
  table6           Table 6, columns 2-4: all 780 Egypt images trained on (no source test
                   set: the paper has none there), tested on all of Poland: real only,
                   real + 400 WGAN images, and real + 400 WGAN images with the whole set
                   doubled by horizontal flips ("Real (780) + Synthetic (1580)").
  demo             no paper table: the same pipeline on real handwritten digits that ship
                   with the package (source: MNIST digits 3 vs 8; targets: UCI optdigits
                   and MNIST-M), scaled to a 2-core CPU — a stand-in, not ultrasound.
  smoke            no paper table: well under a minute of training, for the tests.

Every real-image count of the table variants includes a 10 % validation share (the
paper's "624" reads as BreastMNIST's train 546 + val 78); each classifier keeps the epoch
with the best validation accuracy. The paper fine-tunes ImageNet weights: give them as
`--config.pretrained.resnet50=/weights/resnet50.pth` (and `.vit_b16`), a torchvision
state dict (.pth/.pt, or .npz under the same names); empty = random initialisation.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")


VARIANTS = ("paper", "table1", "table1_poland", "table6_egypt", "table6", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/wgan_synth.py")
  c = ml_collections.ConfigDict()
  c.method = "wgan_aug"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2, 3, 4)  # classifier repeats: initialisation, synthetic draw, batches

  c.data = ml_collections.ConfigDict()
  # "busi", "breastmnist", "breast" (published layouts), "digits" (embedded demo) or your own
  # data as name=path: a class-folder root <path>/<class>/*.png|jpg|tif|dcm or a CSV
  # path,label[,patient_id]; results call it `name`.
  c.data.source = "busi"
  c.data.source_dir = ""  # BUSI folder (Dataset_BUSI_with_GT or its parent) / breastmnist npz
  # / BrEaST release folder
  c.data.targets = ("breast",)  # out-of-domain test hospitals: built-in names or name=path
  # Your domains' classes coded as the paper's label 1 (positive) and 0 (negative); images of
  # other classes are dropped. Both empty: each of your domains must hold exactly two
  # classes, the first in sorted order = 0, the second = 1.
  c.data.positive_classes = ()
  c.data.negative_classes = ()
  # Built-in targets' folders: BrEaST (images + clinical CSV), BUSI, BreastMNIST (npz).
  c.data.target_dirs = ml_collections.ConfigDict({"breast": "", "busi": "", "breastmnist": ""})
  c.data.digits_source = "mnist"  # demo: the source "hospital"
  c.data.positive_digit = 3  # demo: label 1 (the paper's benign side)
  c.data.negative_digit = 8  # demo: label 0 (the paper's malignant side)
  c.data.size = 128  # image side (a power of two: the WGAN grows 4x4 by doubling)
  c.data.channels = 1  # greyscale; classifiers replicate it to 3 channels themselves
  c.data.n_real_train = 100  # real training images of the ratio experiment; 0: every source
  # image outside the test set, the validation share taken out of them
  c.data.val_fraction = 0.1  # real images (x n_real_train, or of all) for checkpoint selection
  c.data.n_source_test = 100  # held-out source images (never seen by GANs or classifiers);
  # 0: no source test set
  c.data.n_target_test = 100  # target images tested per hospital (all, if fewer; 0: all)
  c.data.split_seed = 0  # the test / training / validation draw (stratified by class)

  c.gan = ml_collections.ConfigDict()  # one WGAN per class (spec (b); Ref = PyTorch-GAN wgan.py)
  c.gan.loss = "wgan"  # "wgan" (paper: clipping + spectral norm) or "wgan_gp"
  c.gan.optimizer = "rmsprop"  # Ref: RMSprop(lr 5e-5) for both networks (torch alpha 0.99)
  c.gan.learning_rate = 5e-5
  c.gan.adam_b1 = 0.5  # only with optimizer "adam" (WGAN-GP's 0.5 / 0.9)
  c.gan.adam_b2 = 0.9
  c.gan.clip_value = 0.01  # critic weight clipping after each update; None disables
  c.gan.gp_weight = 10.0  # only with loss "wgan_gp"
  c.gan.spectral_norm = True
  c.gan.n_critic = 5
  c.gan.batch_size = 64
  c.gan.g_steps = 10_000  # generator updates (Ref's 200 epochs are < 2k at <= 570 images)
  c.gan.latent_dim = 100
  c.gan.g_max_channels = 512  # generator: 4x4x512, halving per up-block ...
  c.gan.g_min_channels = 32  # ... down to 32
  c.gan.d_base_channels = 32  # critic: 32, doubling per down-block ...
  c.gan.d_max_channels = 512  # ... up to 512
  c.gan.steps_per_call = 50  # generator steps (each with n_critic critic steps) per jitted call
  c.gan.checkpoint_every = 10  # calls

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.counts = (0, 25, 50, 75, 100)  # real-only, 4:1, 2:1, 3:2 (4:3), 1:1
  c.synthetic.class_split = "proportional"  # synthetic class shares: as the real ones, or "equal"
  c.synthetic.samples_per_class = 100  # WGAN samples drawn per class
  c.synthetic.flip_synth = True  # horizontal flips of the samples join the pool
  c.synthetic.flip_real = False  # flips of the real training images join it too
  # Counts S with an extra row: real + S synthetic images, the whole set then doubled by its
  # horizontal flips (Table 6's "Real (780) + Synthetic (1580)" is S = 400).
  c.synthetic.mirror_counts = ()

  c.classifiers = ("resnet50", "vit_b16", "cnn_transformer")
  # Architecture changes per classifier ({} = the spec's architecture).
  c.classifier_overrides = ml_collections.ConfigDict(
      {"resnet50": {}, "vit_b16": {}, "cnn_transformer": {}})
  # ImageNet initialisation from a user-supplied torchvision state dict (.pth/.pt/.npz of
  # torchvision.models.resnet50 / vit_b_16; nothing is downloaded); "" = random init. The
  # 2-class head stays fresh; images are fed as RGB with ImageNet's mean and std.
  c.pretrained = ml_collections.ConfigDict({"resnet50": "", "vit_b16": "", "cnn_transformer": ""})
  c.train = ml_collections.ConfigDict()  # classifier training (spec (b), R)
  c.train.epochs = 50
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4  # AdamW
  c.train.weight_decay = 1e-4

  # seed: the WGANs' initialisation, batches and samples. train.steps_per_call (classifier
  # steps per jitted call, at most; lowered to divide an epoch, which is evaluated at its
  # end) and train.eval_batch_size are second names of engine.steps_per_call and
  # engine.eval_batch_size.
  common.add_shared(c, seed=0, steps_per_call=1, eval_batch_size=100)
  common.alias(c, "train.steps_per_call", "engine.steps_per_call")
  common.alias(c, "train.eval_batch_size", "engine.eval_batch_size")

  if variant in ("table1", "table1_poland", "table6_egypt", "table6"):
    c.data.n_real_train = 0  # all real images outside the source test set
    c.data.n_target_test = 0  # every target image
    c.synthetic.counts = (0,)
  if variant in ("table1", "table6_egypt"):
    c.data.n_source_test = 156  # 20 % of Egypt's 780 (BreastMNIST's test split size)
  if variant in ("table1", "table1_poland"):
    c.classifiers = ("resnet50",)
  if variant == "table1_poland":
    c.data.source = "breast"
    c.data.targets = ("busi",)
    c.data.n_source_test = 51  # 20 % of BrEaST's 256
  if variant == "table6":
    c.data.n_source_test = 0  # the paper trains on all 780 and tests on Poland only
    c.synthetic.counts = (0, 400)
    c.synthetic.mirror_counts = (400,)  # 400 + flips of (real + 400): "Synthetic (1580)"
    c.synthetic.samples_per_class = 292  # 400 split as the classes: 292 benign, 108 malignant
    c.synthetic.flip_synth = False  # the flips come with the mirrored row
  if variant in ("demo", "smoke"):
    c.data.source = "digits"
    c.data.targets = ("optdigits", "mnist_m")
    c.data.target_dirs = ml_collections.ConfigDict({})
    c.data.size = 32
    c.seeds = (0, 1, 2)
    # WGAN-GP with Adam: the paper's clipped RMSprop at 5e-5 needs far more steps than a
    # 2-core CPU affords; the networks and per-class scheme are the paper's.
    c.gan.loss = "wgan_gp"
    c.gan.optimizer = "adam"
    c.gan.learning_rate = 2e-4
    c.gan.clip_value = None
    c.gan.g_steps = 300
    c.gan.steps_per_call = 1  # one step per call, as the demo's measured table was made
    c.gan.checkpoint_every = 50
    c.gan.batch_size = 32
    c.gan.g_max_channels = 64
    c.gan.g_min_channels = 16
    c.gan.d_base_channels = 16
    c.gan.d_max_channels = 64
    c.gan.latent_dim = 64
    c.synthetic.flip_synth = False  # a mirrored digit is not a digit
    c.classifier_overrides = ml_collections.ConfigDict({
        "resnet50": {"width": 16},
        "vit_b16": {"patch_size": 4, "width": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128,
                    "image_size": 32},
        "cnn_transformer": {"conv_widths": (16, 32, 64), "channels": 64, "embed_dim": 64,
                            "depth": 2, "num_heads": 4, "mlp_dim": 128},
    })
    c.train.epochs = 30
    c.train.learning_rate = 1e-3  # random initialisation: 10x the paper's fine-tuning rate
  if variant == "smoke":
    c.data.size = 16
    c.data.n_real_train = 20
    c.data.n_source_test = 20
    c.data.n_target_test = 20
    c.seeds = (0,)
    c.synthetic.counts = (0, 10)
    c.synthetic.samples_per_class = 10
    c.gan.g_steps = 4
    c.gan.steps_per_call = 2
    c.gan.n_critic = 2
    c.gan.batch_size = 8
    c.gan.g_max_channels = 16
    c.gan.d_base_channels = 8
    c.gan.d_max_channels = 16
    c.gan.latent_dim = 8
    c.classifier_overrides.resnet50 = {"width": 4, "stage_sizes": (1, 1, 1, 1)}
    c.classifier_overrides.vit_b16 = {"patch_size": 4, "width": 16, "depth": 1, "num_heads": 2,
                                      "mlp_dim": 32, "image_size": 16}
    c.classifier_overrides.cnn_transformer = {"conv_widths": (4, 8, 8), "channels": 8,
                                              "embed_dim": 16, "depth": 1, "num_heads": 2,
                                              "mlp_dim": 32}
    c.train.epochs = 2
    c.train.batch_size = 8
    c.train.eval_batch_size = 20
  return c
