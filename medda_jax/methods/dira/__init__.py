"""Discriminative, restorative and adversarial learning by stepwise incremental pre-training
(Guo, Islam, Gotway, Liang; DART 2022): a United 3-D model (`models/united3d.py`: encoder,
pseudo-label head, decoder, adversary) trained stage by stage, D -> (D)+R -> ((D)+R)+A, each
stage initialised from the previous stage's checkpoint.

Layout: `paper.py` is the method (Rotation and Jigsaw pretext transforms, the Models Genesis
restorative pair, the losses of eq. (1)-(4), stage grafting and the adversarial stage's two losses for the
engine's GAN step).
"""

from medda_jax.methods.dira.paper import (ROTATIONS, STAGES, TASKS, LossWeights,
                                          adversary_loss, critic_loss, generator_loss,
                                          discriminative_loss, generator_adversarial_loss,
                                          genesis_pair, graft_stage, jigsaw, make_batch,
                                          make_sample, permutation_table, restorative_loss,
                                          rotate, stage_loss, stage_loss_fn, stage_loss_weights,
                                          stage_restores, unjigsaw, unrotate)
