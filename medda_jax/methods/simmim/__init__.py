"""Benchmarking and boosting transformers for medical image classification (Ma, Hosseinzadeh
Taher, Pang, Islam, Haghighi, Gotway, Liang; DART 2022): ViT-B and Swin-B from random
weights or SimMIM pre-training, including continual SimMIM on an in-domain corpus, each
fine-tuned on multi-label chest X-ray targets.

  python -m medda_jax.train --config=configs/simmim.py --workdir=runs/simmim \
      --config.data.dirs.chestxray14=/path/to/cxr14 --config.data.dirs.chexpert=/path/to/chexpert
  python -m medda_jax.train --config=configs/simmim.py:demo --workdir=runs/simmim_demo

For each backbone:
  1. SimMIM pre-training runs (`pretrain.runs`: name, corpus, the run it continues from):
     random 32-pixel patches masked (ratio 0.6), a learned mask token at the encoder's patch
     level, a 1x1 convolution + pixel shuffle predicting the pixels, L1 on masked pixels;
     AdamW, warm-up + cosine, clipping 5. Each run's orbax checkpoint is its product.
  2. Every initialisation (scratch, and each pre-training run's encoder grafted under a new
     head, `engine.graft`) fine-tuned on every target with AdamW, warm-up + cosine, clipping
     and optional layer-wise decay; the best validation mean AUC's weights are tested.
Tables: (initialisation, backbone) x target, test mean AUC, mean +- std over seeds.

Outputs in the workdir: `results.md` / `results.json`, `reconstructions_<backbone>.png`,
`transfer.png`, `simmim_runs.json` (finished runs; a rerun skips them), `pretrain/` (the
pre-training checkpoints), `metrics.jsonl` and TensorBoard logs.

No published weights can be downloaded here: every initialisation is pre-trained by the run
itself from random weights, and the tables say so.

Layout: `paper.py` is the method (masking, SimMIM head and loss, optimisers), `experiment.py`
runs it, `report.py` makes its tables and `figures.py` its figures.
"""

from medda_jax.methods.simmim.experiment import (RESULTS_FILE, SCRATCH, SimMIMPretext, Study,
                                                 interpolate_position_embedding,
                                                 random_resized_crop, train_and_evaluate,
                                                 validate)
from medda_jax.methods.simmim.paper import (BACKBONES, SimMIM, batch_masks, decay_mask,
                                            finetune_loss, finetune_optimizer, layer_id,
                                            masked_l1, pixel_shuffle, pretrain_loss,
                                            random_mask, upsample_mask)
