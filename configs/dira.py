"""Stepwise incremental pre-training: discriminative, restorative and adversarial learning
added one stage at a time (Guo, Islam, Gotway, Liang; DART 2022).

  python -m medda_jax.train --config=configs/dira.py --workdir=runs/dira \
      --config.data.dirs.luna16=/path/to/LUNA16 --config.data.dirs.lits=/path/to/LiTS \
      --config.data.dirs.brats=/path/to/BraTS2018
  python -m medda_jax.train --config=configs/dira.py:demo --workdir=runs/dira_demo
  python -m medda_jax.train --config=configs/dira.py:smoke --workdir=runs/dira_smoke

For each pretext task (the paper's five: Rotation, Jigsaw, Rubik's Cube, Deep Clustering,
TransVW), the stage runs of every strategy: D (encoder + head on the pseudo-labels), (D)+R
(then a decoder restoring the undistorted cube), ((D)+R)+A (then an adversary judging
restorations), and the end-to-end baseline D+R+A; every stage its own checkpoint, grafted
into the next. Every strategy's model and random weights are then fine-tuned on every
target; tables as the paper's Table 1 (mean ± std over seeds).

`paper` (the default): LUNA16's scans as the corpus (64-voxel cubes), a Models Genesis-size
United model (32 -> 512 features, 4 down-samplings), the paper's targets that install from
their publishers: NCC (LUNA16 candidates, AUC), LCS (LiTS liver, IoU), BMS (BraTS whole
tumour, IoU); PE-CAD and LIDC-IDRI are not read. Where the paper is silent the spec's
recommendations stand (lambda_d = lambda_r = 1, lambda_a = 1e-3; 100 permutations),
and these assumptions: Adam 1e-3, batch 16, 10,000 updates per stage; fine-tuning with Adam,
early stopping on validation, 10 seeds. `demo` runs on cubes of the two real brain volumes
of the brain demo with the real AAL hippocampus as the targets' label (classification: does
the crop hold it, AUC; segmentation: its mask, IoU), at 4 mm and 16-voxel cubes, with a
small United model; `smoke` runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/dira.py")
  c = ml_collections.ConfigDict()
  c.method = "dira"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # fine-tuning seeds (the paper: at least 10 runs)
  c.tasks = ("rotation", "jigsaw")
  c.strategies = ("D", "(D)+R", "((D)+R)+A", "D+R+A")
  c.targets = ("hippocampus_cls", "hippocampus_seg")

  c.data = ml_collections.ConfigDict()
  # "demo", "luna16" (data.dirs.luna16: subset0/ ... subset9/ of .mhd/.raw scans), or a
  # data.user name: 'name=path', a folder of .nii / .nii.gz / .mhd volumes or a CSV with a
  # path column, read volume by volume (data.intensity: "ct" HU window or "mr" percentiles)
  c.data.corpus = "demo"
  c.data.dirs = ml_collections.ConfigDict(dict(luna16="", lits="", brats=""))
  c.data.user = ()
  # your targets, 'name=path' of a CSV: image and mask columns (segmentation, IoU) or image
  # and label (classification, AUC), paths relative to the CSV, optional split column
  # (train / val / test; otherwise by row order 70 / 10 / 20 %)
  c.data.user_targets = ()
  # crops per split of the paper's and your targets (cut once into workdir/targets/)
  c.data.target_crops = ml_collections.ConfigDict(dict(train=2000, val=400, test=1000))
  c.data.intensity = "ct"
  c.data.crops_per_volume = 8  # consecutive cubes cut from one volume before the next
  # the demo's sizes
  c.data.demo_corpus_crops = 600  # cubes of the train and validation subjects
  c.data.demo_train_crops = 64
  c.data.demo_val_crops = 32
  c.data.demo_test_crops = 80
  c.data.demo_coarsen = 2  # 4 mm voxels: a 16-voxel cube spans 64 mm of head

  c.model = ml_collections.ConfigDict()
  c.model.features = 8  # Models Genesis: 32 (-> 512 over 5 levels)
  c.model.levels = 3
  # the pretext head on the bottleneck: "mean" (global average pool, the spec's) or "flatten"
  c.model.head_pool = "mean"

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.size = 16  # cube side: 64 mm at the demo's 4 mm (the paper: 64 voxels of CT)
  c.pretrain.steps = 160  # updates per stage run
  c.pretrain.batch_size = 8
  c.pretrain.learning_rate = 1e-3
  c.pretrain.permutations = 100  # maximal-Hamming permutation table (Jigsaw, Rubik's Cube)
  # Deep Clustering: k-means into `clusters` of the encoder's features of `cluster_pool`
  # cubes (its epoch), again after every epoch
  c.pretrain.clusters = 100
  c.pretrain.cluster_pool = 1000
  # TransVW (methods/dira/visual_words.py): `words` visual words, each the cube at one
  # coordinate of a reference patient and of its `instances` - 1 nearest patients (codes:
  # each volume resampled to grid^3, its first `dims` principal components); a coordinate is
  # kept where at least `min_tissue` of the reference's cube is at or above `tissue_level`
  # (0.425: -150 HU in the CT window), `border` of each axis left clear. The published
  # pattern generator's defaults: 200 words of 200 instances.
  c.pretrain.transvw = ml_collections.ConfigDict(dict(
      words=200, instances=200, grid=16, dims=32, border=0.1, tissue_level=0.425,
      min_tissue=0.5))
  c.pretrain.lambda_d, c.pretrain.lambda_r, c.pretrain.lambda_a = 1.0, 1.0, 1e-3

  c.transfer = ml_collections.ConfigDict()
  c.transfer.batch_size = 8
  c.transfer.classification = ml_collections.ConfigDict(
      dict(epochs=10, learning_rate=1e-3, patience=5))
  # "dice" or "bce+dice" (see experiment.target_loss)
  c.transfer.segmentation = ml_collections.ConfigDict(
      dict(epochs=12, learning_rate=5e-3, patience=8, loss="dice"))
  c.transfer.checkpoint_epochs = 5  # epochs between a fine-tuning's resumable checkpoints
  # shares of each target's training crops fine-tuned on (1.0 the whole split, the tables'
  # runs); more than one adds the curve of the paper's Fig. 4
  c.transfer.label_fractions = (1.0,)

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 10  # calls between pre-training checkpoints
  common.add_shared(c, seed=None, steps_per_call=5, eval_batch_size=40)
  if variant in (None, "paper"):
    c.seeds = tuple(range(10))
    c.tasks = ("rotation", "jigsaw", "rubik", "deep_clustering", "transvw")
    c.targets = ("ncc", "lcs", "bms")
    c.data.corpus = "luna16"
    c.model.features, c.model.levels = 32, 5
    c.pretrain.size = 64
    c.pretrain.steps, c.pretrain.batch_size = 10_000, 16
    c.transfer.batch_size = 16
    c.transfer.classification.update(epochs=50, patience=10)
    c.transfer.segmentation.update(epochs=100, learning_rate=1e-3, patience=10,
                                   loss="bce+dice")
    # Fig. 4's annotation-efficiency curves; the shares are an assumption (the text gives
    # only the savings read off the curves)
    c.transfer.label_fractions = (0.1, 0.25, 0.5, 1.0)
    c.engine.checkpoint_every = 100
    c.engine.eval_batch_size = 16
  if variant == "demo":
    # Rotation only: Jigsaw's stage runs and fine-tunings would double the demo's 2-core
    # time (it runs in the smoke config and takes your data like Rotation)
    c.tasks = ("rotation",)
    # six patients (the training and validation subjects) for `tasks` with transvw
    c.pretrain.transvw.update(words=6, instances=3, tissue_level=0.2)
  if variant == "smoke":
    c.seeds = (0,)
    c.strategies = ("(D)+R", "((D)+R)+A", "D+R+A")
    c.data.demo_corpus_crops = 16
    c.data.demo_train_crops, c.data.demo_val_crops, c.data.demo_test_crops = 8, 6, 6
    c.model.features, c.model.levels = 2, 2
    c.pretrain.size = 16
    c.pretrain.steps, c.pretrain.batch_size = 4, 2
    c.pretrain.permutations = 10
    c.pretrain.clusters, c.pretrain.cluster_pool = 4, 16
    c.pretrain.transvw.update(words=3, instances=2, grid=8, dims=4, tissue_level=0.2)
    c.transfer.batch_size = 4
    c.transfer.classification.epochs = c.transfer.segmentation.epochs = 2
    c.engine.steps_per_call = 2
    c.engine.checkpoint_every = 1
    c.engine.eval_batch_size = 6
  return c
