"""Discriminative, restorative and adversarial learning by stepwise incremental pre-training
(Guo, Islam, Gotway, Liang; DART 2022): a United 3-D model (`models/united3d.py`: encoder,
pseudo-label head, decoder, adversary) trained stage by stage, D -> (D)+R -> ((D)+R)+A, each
stage initialised from the previous stage's checkpoint.

Layout: `paper.py` is the method (Rotation and Jigsaw pretext transforms, the Models Genesis
restorative pair, the losses of eq. (1)-(4), stage grafting, and the adversarial stage's two
losses for the engine's GAN step); `pretrain.py` runs the stages, each a resumable engine
run with its own checkpoint; `volumes.py` streams corpora of whole volumes (LUNA16, yours);
`targets.py` cuts the transfer targets (NCC, LiTS, BraTS, yours) volume by volume;
`experiment.py` is the study (transfer of every strategy to every target, the driver of
`configs/dira.py`); `report.py` and `figures.py` its tables and figures.
"""

from medda_jax.methods.dira.paper import (ROTATIONS, STAGES, TASKS, LossWeights,
                                          adversary_loss, critic_loss, generator_loss,
                                          discriminative_loss, generator_adversarial_loss,
                                          genesis_pair, graft_stage, jigsaw, make_batch,
                                          make_sample, permutation_table, restorative_loss,
                                          rotate, stage_loss, stage_loss_fn, stage_loss_weights,
                                          stage_restores, unjigsaw, unrotate)
from medda_jax.methods.dira.experiment import (RESULTS_FILE, train_and_evaluate,  # noqa: E402
                                               validate)
