"""POPAR: patch order prediction and appearance recovery (Pang et al., DART 2022).

  python -m medda_jax.train --config=configs/popar.py --workdir=runs/popar \
      --config.data.dirs.chestxray14=/path/to/cxr14 \
      --config.data.dirs.chexpert=/path/to/CheXpert-v1.0-small \
      --config.data.dirs.shenzhen=/path/to/shenzhen \
      --config.data.dirs.rsna_pneumonia=/path/to/rsna                     # paper setting
  python -m medda_jax.train --config=configs/popar.py --workdir=runs/mine \
      --config.data.user='("xrays=/path/to/unlabelled.csv", "mytask=/path/to/labels.csv")' \
      --config.pretrain.runs='(("POPAR xrays", "xrays", "", "popar"),)' \
      --config.transfer.targets='("mytask",)'
  python -m medda_jax.train --config=configs/popar.py:demo --workdir=runs/popar_demo
  python -m medda_jax.train --config=configs/popar.py:smoke --workdir=runs/popar_smoke

The default is the paper's setting given the data (spec popar.md §b): POPAR pre-training on
ChestX-ray14's training split, ViT-B/16 at 224 px (16-pixel patches, POPAR^-3) for 1,000
epochs and Swin-B at 448 px (32-pixel patches, window 7, POPAR^-1) for 300; SGD with
learning rate 0.1, lambda 0.5, shuffling or the Models Genesis distortion with probability
1/2 each and the Models Genesis rates (non-linear 0.9, local shuffling 0.5, painting 0.9 of
which out-painting 0.8). Not in the paper, so the spec's assumptions: momentum 0.9, batch 64,
10 warm-up epochs then cosine, no weight decay. Fine-tuning at 224 px on ChestX-ray14,
CheXpert, Shenzhen and RSNA Pneumonia with the transformer benchmark's settings
(configs/simmim.py; the paper's are in its appendix). RSNA Pneumonia is reported as mean AUC
over its three classes, not the paper's accuracy.

Each pre-training run is (name, corpus, the run it continues from or "", task); tasks:
"popar", its sub-tasks "poc" (order classification only), "poc+mpr" (order + misplaced-patch
recovery), "mgr" (Models Genesis restoration only), and "simmim" (SimMIM with the settings
in config.pretrain, as in configs/simmim.py).

`demo` compares POPAR with its sub-tasks "poc" and "mgr" and with SimMIM on a tiny ViT
(8-pixel patches, as the paper's sub-task ablation uses ViT-B), all pre-trained for 30
epochs on the embedded radiograph-like projections of two real brain volumes (not chest
X-rays) at 48 px with AdamW (SGD learnt no patch order in so few steps), then fine-tuned on
the synthetic-findings task at 64 px; `smoke` runs both backbones in seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")
simmim = load_sibling(__file__, "simmim")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/popar.py")
  c = simmim.get_config(variant)
  c.method = "popar"  # module in medda_jax/methods/
  c.pretrain.runs = (("POPAR ChestX-ray14", "chestxray14", "", "popar"),)
  c.transfer.targets = ("chestxray14", "chexpert", "shenzhen", "rsna_pneumonia")

  c.popar = ml_collections.ConfigDict()
  c.popar.image_size = ml_collections.ConfigDict(dict(vit=224, swin=448))
  c.popar.swin_window = 7  # Swin-B's default window at 448 px (a 112 x 112 token grid)
  c.popar.epochs = ml_collections.ConfigDict(dict(vit=1000, swin=300))
  c.popar.warmup_epochs = 10
  c.popar.batch_size = 64
  c.popar.optimizer = "sgd"  # or "adamw" (b1 0.9, b2 0.999)
  c.popar.learning_rate = 0.1
  c.popar.min_lr = 0.0
  c.popar.momentum = 0.9
  c.popar.weight_decay = 0.0
  c.popar.clip_norm = 0.0  # 0: no clipping
  c.popar.order_weight = 0.5  # lambda
  c.popar.shuffle_probability = 0.5  # else the Models Genesis distortion
  c.popar.genesis = ml_collections.ConfigDict(dict(
      nonlinear_rate=0.9, local_rate=0.5, paint_rate=0.9, outpaint_rate=0.8))

  if variant in (None, "paper"):
    return c
  c.pretrain.runs = (("POPAR in-domain", "in_domain", "", "popar"),
                     ("order only (POC) in-domain", "in_domain", "", "poc"),
                     ("MG restoration (MGR) in-domain", "in_domain", "", "mgr"),
                     ("SimMIM in-domain", "in_domain", "", "simmim"))
  c.transfer.targets = ("demo",)
  c.backbones = ("vit",)  # the paper's sub-task ablation is on ViT-B; Swin: default, smoke
  c.popar.image_size.update(dict(vit=48, swin=48))
  c.popar.swin_window = 3
  # 30 epochs (930 steps) instead of the paper's 1,000: POPAR's order accuracy took off only
  # after about 200 steps (0.09 after 10 epochs, 0.43 after 20, 0.67 after 30), and SGD
  # (lr 0.1-0.5, clipped) learnt no patch order in 300 steps where AdamW reached 0.27
  c.popar.epochs.update(dict(vit=30, swin=30))
  c.popar.warmup_epochs = 2
  c.pretrain.epochs, c.pretrain.warmup_epochs = 30, 2  # SimMIM runs: the same budget
  c.popar.optimizer = "adamw"
  c.popar.learning_rate = 1e-3
  c.popar.weight_decay = 0.05
  c.popar.clip_norm = 1.0
  if variant == "smoke":
    c.backbones = ("swin", "vit")
    c.seeds = (0,)
    c.pretrain.runs = (("POPAR in-domain", "in_domain", "", "popar"),
                       ("POPAR continued", "in_domain", "POPAR in-domain", "popar"),
                       ("POC in-domain", "in_domain", "", "poc"),
                       ("SimMIM in-domain", "in_domain", "", "simmim"))
    c.popar.image_size.update(dict(vit=24, swin=24))
    c.popar.swin_window = 3
    c.popar.epochs.update(dict(vit=2, swin=2))
    c.popar.warmup_epochs = 1
    c.pretrain.epochs, c.pretrain.warmup_epochs = 2, 1
    c.popar.batch_size = 6
  return c
