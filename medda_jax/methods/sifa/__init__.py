"""SIFA and SIFA + SynthMix: unsupervised cross-modality cardiac segmentation (seed 004).

  python -m medda_jax.train --config=configs/synthmix.py:demo --workdir=runs/synthmix
  python -m medda_jax.train --config=configs/synthmix.py --workdir=runs/mmwhs \
      --config.data.dirs.mmwhs=/data/MM-WHS

For each direction source -> target (default MR -> CT and CT -> MR), each method (SIFA, and
SIFA + SynthMix: the same iteration plus the aligned mixes and the Mixup Inspector) and
each seed: one training run on the labelled source slices and the unlabelled target slices
(`paper.py`: the eight sub-steps of an iteration on the GAN engine, several iterations per
jitted call), then slice-wise prediction of the target's test volumes with E and C (running
BatchNorm statistics), restacked, scored per class by Dice and ASSD.

Outputs in the workdir: `results.md` / `results.json` (the seed's Table-1 shape: AA / LAC /
LVC / MYO / mean, Dice and ASSD, mean +- std over volumes, and the t-test of SynthMix
against SIFA), `segmentation_<S>_to_<T>.png` (overlays), `translations_<S>_to_<T>_<method>
.png` (translations, masks, mixes and Inspector maps), `runs.json` (finished runs; a rerun
skips them), per-run checkpoints while a run trains (a killed run resumes with its pools and
RNG), `metrics.jsonl` and TensorBoard logs.

Layout: `paper.py` is the method (losses, SynthMix, the engine mapping), `experiment.py`
runs it, `report.py` makes its tables and `figures.py` its figures.
"""

from medda_jax.methods.sifa.experiment import (METHODS, Domain, Sifa, Volume, load_domain,
                                               score_volume, tile, train_and_evaluate,
                                               train_batches, validate)
from medda_jax.methods.sifa.paper import (Nets, draw_masks, initial_model_state,
                                          inspector_bce, inspector_loss, mix, sifa_losses,
                                          task_loss, upsample_masks)
from medda_jax.methods.sifa.report import PAPER, summarise, tables_markdown
