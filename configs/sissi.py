"""SISSI: self-training with synthetic-like images for cell detection from noisy labels.

  python -m medda_jax.train --config=configs/sissi.py --workdir=runs/sissi \
      --config.data.cellpose_root=/path/to/cellpose \
      --config.data.user="('celllab=/path/train.csv',)" \
      --config.data.user_test="('r1=/path/test_r1.csv','r2=/path/test_r2.csv')"  # paper setting
  python -m medda_jax.train --config=configs/sissi.py:demo --workdir=runs/sissi_demo
  python -m medda_jax.train --config=configs/sissi.py:smoke --workdir=runs/sissi_smoke

The default is the paper's setting (spec sissi.md (b)): 512 x 512 inputs, ResNet-50 + FPN
(the detector substitutes a CenterNet-style anchor-free head for Faster R-CNN; no COCO
weights), mixed batches of 8 (4 target + 4 Cellpose), SGD momentum 0.9, weight decay 2e-4,
lr 1e-3 x 0.1 every 10 epochs, detection score >= 0.05 and NMS IoU 0.2, pseudo-labels with
score >= 0.1 from 20 TTA versions fused by WBF, ADELE threshold 0.9, blur W = 21 x 21 and
S = 31 x 31 with sigma 12 (the paper's "(12, 32)" is not a valid kernel), all six
pipelines of Table 1, seed 1337. The target is your data (CellLab is private): a manifest of
noisy-labelled training images and one reference manifest per reader. `demo` runs on the
embedded IHC stand-in scaled to a 2-core CPU; `smoke` runs in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/sissi.py")
  c = ml_collections.ConfigDict()
  c.method = "sissi"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (1337,)  # each: detector init, batches and augmentation of every pipeline

  c.data = ml_collections.ConfigDict()
  c.data.source = "cellpose"  # labelled source: "cellpose" (published layout) or "demo" (synthetic)
  c.data.cellpose_root = ""  # Cellpose folder: train/ and test/ with XXX_img.png + XXX_masks.png
  c.data.target = "user"  # noisy-labelled target: "user" (data.user) or "demo" (IHC stand-in)
  # Your target, 'name=manifest': CSV image,x1,y1,x2,y2 (pixels; empty box = no cells) or
  # COCO JSON; its boxes are the noisy labels (e.g. from noisy_labels.weak_boxes).
  c.data.user = ()
  c.data.user_test = ()  # 'reader=manifest' per reader of the target test images
  c.data.size = 512  # images resized to size x size (paper); divisible by 32
  c.data.demo_train_width = 384  # demo: IHC tiles left of this x are training, right test
  c.data.demo_rows = 8  # demo: rows of tiles used (from the top)
  c.data.demo_source_images = 64  # demo: synthetic labelled source images

  c.noisy = ml_collections.ConfigDict()  # the demo's weak-label generators (noisy_labels.py)
  c.noisy.radii = (4, 10)  # Hough circle radii in pixels; also watershed's minimum peak distance
  c.noisy.hough_threshold = 0.6  # Hough accumulator threshold
  c.noisy.min_area = 20  # smallest watershed / edge region in pixels
  c.noisy.max_side = 32  # boxes with a longer side (clumps) are dropped

  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (3, 4, 6, 3)  # ResNet-50
  c.model.width = 64  # ResNet base width
  c.model.fpn_features = 256  # FPN and head channels

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30  # epochs over the target training images
  c.train.batch_size = 8  # half target, half source (the mixed batch)
  c.train.optimizer = "sgd"  # "sgd" (paper) or "adam"
  c.train.learning_rate = 1e-3
  c.train.momentum = 0.9  # SGD
  c.train.weight_decay = 2e-4  # coupled, as torch SGD
  c.train.lr_step_epochs = 10  # lr x lr_gamma every this many epochs (code's step size)
  c.train.lr_gamma = 0.1

  c.detect = ml_collections.ConfigDict()
  c.detect.score_min = 0.05  # detection score threshold (code)
  c.detect.nms_iou = 0.2  # NMS IoU (code)
  c.detect.max_dets = 100  # peaks decoded per image (and COCO maxDets)

  c.sissi = ml_collections.ConfigDict()
  # Table 1 rows: baseline, sissi_w, sissi_s (start at the source-loss minimum), plain_a,
  # a_sissi_w, a_sissi_s (ADELE start); w / s = weak / strong background blur
  c.sissi.pipelines = ("baseline", "sissi_w", "sissi_s", "plain_a", "a_sissi_w", "a_sissi_s")
  c.sissi.tta_scales = (0.8, 0.9, 1.0, 1.1, 1.2)  # x {none, h, v, hv} = 20 versions
  c.sissi.tta_flips = ("none", "h", "v", "hv")
  c.sissi.wbf_iou = 0.55  # WBF cluster IoU (the reference WBF's default)
  c.sissi.pseudo_score = 0.1  # fused boxes kept as pseudo-labels (code)
  c.sissi.adele_threshold = 0.9  # ADELE relative-change threshold
  c.sissi.adele_min_increment = 0.1  # leading AP50 points rising less than this are dropped (code)
  c.sissi.blur_weak = (21, 0.0)  # (kernel, sigma; 0 = from the kernel) of the background
  c.sissi.blur_strong = (31, 12.0)
  c.sissi.force_start = 0  # > 0: correction starts at this epoch in every non-baseline pipeline

  c.engine = ml_collections.ConfigDict()
  common.add_shared(c, seed=None, steps_per_call=1, eval_batch_size=16)

  if variant in (None, "paper"):
    return c
  c.data.source = "demo"
  c.data.target = "demo"
  c.data.size = 64
  c.seeds = (0, 1, 2)
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.width = 8
  c.model.fpn_features = 32
  c.data.demo_rows = 6  # 36 training and 12 test tiles
  c.train.epochs = 12
  # A from-scratch tiny detector: SGD at the paper's 1e-3 (meant for COCO weights) hardly
  # moves in 12 short epochs and diverged at 5e-2; Adam at 2e-3 trains.
  c.train.optimizer = "adam"
  c.train.learning_rate = 2e-3
  c.train.lr_step_epochs = 10
  # The demo detector's AP50 against the noisy labels stays below 0.1 for many epochs, so
  # the code's 0.1 would drop the whole curve and ADELE would never start.
  c.sissi.adele_min_increment = 0.005
  c.sissi.pipelines = ("baseline", "plain_a", "a_sissi_w")
  c.sissi.tta_scales = (1.0, 1.5)  # 64 and 96 px inputs (the stride-32 trunk rounds up)
  c.engine.steps_per_call = 2
  if variant == "smoke":
    c.seeds = (0, 1)
    c.data.demo_rows = 2
    c.data.demo_source_images = 8
    c.model.width = 4
    c.model.fpn_features = 8
    c.train.epochs = 3
    c.sissi.pipelines = ("baseline", "a_sissi_w")
    c.sissi.tta_scales = (1.0,)
    c.sissi.tta_flips = ("none", "h")
    c.sissi.force_start = 2  # too few epochs for ADELE's fit: correction in epochs 2 and 3
    c.engine.steps_per_call = 1
  return c
