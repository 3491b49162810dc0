"""Transformers for medical image classification with SimMIM pre-training (Ma et al., DART 2022).

  python -m medda_jax.train --config=configs/simmim.py --workdir=runs/simmim \
      --config.data.dirs.chestxray14=/path/to/cxr14 \
      --config.data.dirs.chexpert=/path/to/CheXpert-v1.0-small          # paper setting
  python -m medda_jax.train --config=configs/simmim.py --workdir=runs/mine \
      --config.data.user='("xrays=/path/to/unlabelled.csv", "mytask=/path/to/labels.csv")' \
      --config.pretrain.runs='(("SimMIM xrays", "xrays", ""),)' \
      --config.transfer.targets='("mytask",)'
  python -m medda_jax.train --config=configs/simmim.py:demo --workdir=runs/simmim_demo
  python -m medda_jax.train --config=configs/simmim.py:smoke --workdir=runs/simmim_smoke

The default is the paper's setting given the data (spec transformers_simmim.md §b): Swin-B
and ViT-B/16; SimMIM pre-training with the public SimMIM defaults (Swin-B at 192 px with
window 6, ViT-B at 224 px; 32-pixel mask patches, ratio 0.6; AdamW (0.9, 0.999), weight decay
0.05, base lr 1e-4 per 512 images, 100 epochs with 10 of warm-up, clipping 5) on
ChestX-ray14; every initialisation (scratch, SimMIM) fine-tuned on ChestX-ray14 and CheXpert
at 224 px (Swin window 7) with AdamW lr 2e-4 per 256 images, 5 warm-up epochs then cosine,
weight decay 0.05, batch 64, early stopping on validation AUC (the paper's fine-tuning
settings are in its supplement; these are the spec's stated assumptions). The paper's
ImageNet pre-trainings need ImageNet (`data.user` class-folder root `imagenet=/path`). Ten
seeds in the paper; three here.

`demo` runs both backbones (tiny) on the embedded data: natural photographs as the
"ImageNet" stand-in, radiograph-like projections of two real brain volumes as the in-domain
corpus, and a synthetic-findings task on such projections, with scratch, SimMIM natural,
SimMIM in-domain and continual SimMIM natural -> in-domain; pre-training at 48 px (Swin window
3) and fine-tuning at 64 px (window 4), as the paper goes from 192 to 224. `smoke` runs in
seconds for the tests.
"""

import ml_collections

from medda_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VARIANTS = ("paper", "demo", "smoke")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  common.check_variant(variant, VARIANTS, "configs/simmim.py")
  c = ml_collections.ConfigDict()
  c.method = "simmim"  # module in medda_jax/methods/
  c.variant = variant or "paper"
  c.seeds = (0, 1, 2)  # fine-tuning seeds (the paper: 10 runs)
  c.backbones = ("swin", "vit")

  c.data = ml_collections.ConfigDict()
  # published layouts (data/chestxray.py); "" where you do not have the set
  c.data.dirs = ml_collections.ConfigDict(dict(
      chestxray14="", chexpert="", shenzhen="", vindr_cxr="", rsna_pneumonia=""))
  # Your datasets, 'name=path': a CSV manifest (path[,patient_id],<label>,...) or a
  # class-folder root (data/chestxray.py); usable as a pre-training corpus or a target.
  c.data.user = ()
  c.data.uncertain = "zeros"  # CheXpert's -1 labels: "zeros", "ones" or "ignore"
  c.data.frontal_only = True  # CheXpert: frontal views only
  c.data.vindr_aggregate = "majority"  # VinDr-CXR's 3 radiologists: "majority" or "any"
  c.data.test_fraction = 0.2  # random patient-level splits (the paper: official where any)
  c.data.val_fraction = 0.1
  c.data.max_test_images = 0  # 0: the whole test split
  c.data.split_seed = 0
  c.data.threads = 4
  # the embedded demo sets ("natural", "in_domain" corpora; "demo" findings task)
  c.data.demo_corpus_images = 2000
  c.data.demo_train_images = 300
  c.data.demo_val_images = 100
  c.data.demo_test_images = 300

  c.model = ml_collections.ConfigDict()
  c.model.swin = ml_collections.ConfigDict(dict(
      patch=4, embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), window=7,
      pretrain_window=6, drop_path=0.1, pretrain_drop_path=0.0))
  c.model.vit = ml_collections.ConfigDict(dict(
      patch=16, width=768, depth=12, heads=12, mlp_dim=3072, dropout=0.0))

  c.pretrain = ml_collections.ConfigDict()
  # (name, corpus, name of the run it continues from or ""); corpora: chestxray14,
  # chexpert, shenzhen, vindr_cxr, rsna_pneumonia, your data.user names, or the demo's
  # "natural" / "in_domain"
  c.pretrain.runs = (("SimMIM ChestX-ray14", "chestxray14", ""),)
  c.pretrain.image_size = ml_collections.ConfigDict(dict(swin=192, vit=224))
  c.pretrain.mask_patch = 32
  c.pretrain.mask_ratio = 0.6
  c.pretrain.epochs = 100
  c.pretrain.warmup_epochs = 10
  c.pretrain.batch_size = 128
  c.pretrain.base_lr = 1e-4  # per lr_batch images (linear scaling)
  c.pretrain.lr_batch = 512
  c.pretrain.min_lr = 5e-7
  c.pretrain.weight_decay = 0.05
  c.pretrain.b1, c.pretrain.b2 = 0.9, 0.999
  c.pretrain.clip_norm = 5.0

  c.transfer = ml_collections.ConfigDict()
  c.transfer.targets = ("chestxray14", "chexpert")
  c.transfer.image_size = ml_collections.ConfigDict(dict(swin=224, vit=224))
  c.transfer.epochs = 100
  c.transfer.warmup_epochs = 5
  c.transfer.patience = 10  # epochs without a better validation AUC
  c.transfer.checkpoint_epochs = 1  # epochs between fine-tuning checkpoints
  c.transfer.batch_size = 64
  c.transfer.base_lr = 2e-4  # per lr_batch images
  c.transfer.lr_batch = 256
  c.transfer.min_lr = 1e-6
  c.transfer.weight_decay = 0.05
  c.transfer.b1, c.transfer.b2 = 0.9, 0.999
  c.transfer.clip_norm = 5.0
  # Published weights as further initialisations, 'backbone:name=path' (torchvision ViT-B/16
  # or timm Swin state dicts: .pth with torch installed, .npz, .safetensors; models/convert.py)
  c.transfer.weights = ()
  c.transfer.layer_decay = 1.0  # < 1: layer-wise lr decay (SimMIM's Swin-B fine-tuning: 0.9)

  c.engine = ml_collections.ConfigDict()
  c.engine.checkpoint_every = 500  # calls between pre-training checkpoints
  common.add_shared(c, seed=None, steps_per_call=1, eval_batch_size=64)

  if variant in (None, "paper"):
    return c
  c.pretrain.runs = (("SimMIM natural", "natural", ""), ("SimMIM in-domain", "in_domain", ""),
                     ("SimMIM natural→in-domain", "in_domain", "SimMIM natural"))
  c.transfer.targets = ("demo",)
  c.model.swin.update(dict(patch=4, embed_dim=32, depths=(2, 2), heads=(2, 4), window=4,
                           pretrain_window=3, drop_path=0.05))
  c.model.vit.update(dict(patch=8, width=64, depth=4, heads=4, mlp_dim=128))
  c.pretrain.image_size.update(dict(swin=48, vit=48))
  c.transfer.image_size.update(dict(swin=64, vit=64))
  c.pretrain.mask_patch = 8
  c.data.demo_train_images = 200
  c.pretrain.epochs, c.pretrain.warmup_epochs, c.pretrain.batch_size = 10, 1, 64
  c.pretrain.base_lr, c.pretrain.lr_batch = 1e-3, 64
  c.transfer.epochs, c.transfer.warmup_epochs, c.transfer.batch_size = 40, 2, 32
  c.transfer.base_lr, c.transfer.lr_batch = 1e-3, 32
  c.transfer.patience = 15  # the small findings are often picked up only after 20 epochs
  c.transfer.checkpoint_epochs = 5
  c.engine.steps_per_call = 5
  c.engine.checkpoint_every = 20
  c.engine.eval_batch_size = 100
  if variant == "smoke":
    c.seeds = (0, 1)
    c.pretrain.runs = (("SimMIM in-domain", "in_domain", ""),
                       ("SimMIM continued", "in_domain", "SimMIM in-domain"))
    c.data.demo_corpus_images = 24
    c.data.demo_train_images, c.data.demo_val_images, c.data.demo_test_images = 12, 12, 12
    c.model.swin.update(dict(embed_dim=8, depths=(1, 2), heads=(1, 2)))
    c.model.vit.update(dict(width=16, depth=2, heads=2, mlp_dim=16))
    c.pretrain.image_size.update(dict(swin=24, vit=24))
    c.transfer.image_size.update(dict(swin=32, vit=32))
    c.pretrain.epochs, c.pretrain.warmup_epochs, c.pretrain.batch_size = 2, 1, 6
    c.transfer.epochs, c.transfer.warmup_epochs, c.transfer.batch_size = 2, 1, 6
    c.transfer.checkpoint_epochs = 1
    c.engine.steps_per_call = 2
    c.engine.checkpoint_every = 1
    c.engine.eval_batch_size = 12
  return c
