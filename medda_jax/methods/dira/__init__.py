"""Discriminative, restorative and adversarial learning by stepwise incremental pre-training
(Guo, Islam, Gotway, Liang; DART 2022): a United 3-D model (`models/united3d.py`: encoder,
pseudo-label head, decoder, adversary) trained stage by stage, D -> (D)+R -> ((D)+R)+A, each
stage initialised from the previous stage's checkpoint.

Layout: `paper.py` is the method (Rotation and Jigsaw pretext transforms, the Models Genesis
restorative pair, the losses of eq. (1)-(4), stage grafting, and the adversarial stage's two
losses for the engine's GAN step); `pretrain.py` runs the stages, each a resumable engine
run with its own checkpoint; `volumes.py` streams corpora of whole volumes (LUNA16, yours).
Not a runnable method yet: its transfer and driver (`configs/dira.py`) are still to come.
"""

from medda_jax.methods.dira.paper import (ROTATIONS, STAGES, TASKS, LossWeights,
                                          adversary_loss, critic_loss, generator_loss,
                                          discriminative_loss, generator_adversarial_loss,
                                          genesis_pair, graft_stage, jigsaw, make_batch,
                                          make_sample, permutation_table, restorative_loss,
                                          rotate, stage_loss, stage_loss_fn, stage_loss_weights,
                                          stage_restores, unjigsaw, unrotate)
