"""POPAR: patch order prediction and appearance recovery for self-supervised medical image
analysis (Pang, Haghighi, Ma, Islam, Hosseinzadeh Taher, Gotway, Liang; DART 2022).

  python -m medda_jax.train --config=configs/popar.py --workdir=runs/popar \
      --config.data.dirs.chestxray14=/path/to/cxr14 --config.data.dirs.chexpert=/path/to/chexpert
  python -m medda_jax.train --config=configs/popar.py:demo --workdir=runs/popar_demo

For each backbone (ViT: 16-pixel patches at 224 px, POPAR^-3; Swin: 32-pixel patches at
448 px, POPAR^-1):
  1. Pre-training runs (`pretrain.runs`: name, corpus, the run it continues from, task):
     POPAR (`paper.py`: per image, patch order shuffled or Models Genesis appearance
     distortion; order classification + appearance regression on every output token; SGD),
     its sub-tasks (order only `poc`, with misplaced-patch recovery `poc+mpr`, Models Genesis
     restoration only `mgr`), and SimMIM (`methods/simmim`) for comparison. Each run's orbax
     checkpoint is its product.
  2. Every initialisation (scratch, each run's encoder grafted under a new head) fine-tuned
     on every target as in methods/simmim; the best validation mean AUC's weights are tested.
Tables: (initialisation, backbone) x target, test mean AUC, mean +- std over seeds.

Outputs in the workdir: `results.md` / `results.json`, `reconstructions_<backbone>.png`
(shuffled inputs, the order the model restores, the appearance it recovers), `transfer.png`,
`simmim_runs.json` (finished runs; a rerun skips them), `pretrain/`, `metrics.jsonl` and
TensorBoard logs. No published weights can be downloaded here: every initialisation is
pre-trained by the run itself from random weights, and the tables say so.
"""

from medda_jax.methods.popar.experiment import (PRETEXTS, PopARPretext, train_and_evaluate,
                                                validate)
from medda_jax.methods.popar.paper import (TASKS, PopAR, distort, patchify, popar_losses,
                                           pretrain_loss, pretrain_optimizer, restore_order,
                                           unpatchify)
