"""The paper's method: CycleGAN (Zhu et al., 2017) with the reference implementation's
defaults (junyanz/pytorch-CycleGAN-and-pix2pix), as losses of the GAN engine.

Naming follows the reference: G_A translates A -> B, G_B translates B -> A; D_A judges
B-style images, D_B judges A-style images. One iteration, on one unpaired pair (a, b):

    fake_b = G_A(a), rec_a = G_B(fake_b), fake_a = G_B(b), rec_b = G_A(fake_a)
    L_G = LS(D_A(fake_b), 1) + LS(D_B(fake_a), 1)
        + lambda_A |rec_a - a| + lambda_B |rec_b - b|
        + lambda_idt (lambda_B |G_A(b) - b| + lambda_A |G_B(a) - a|)      (means over pixels)
    update G_A and G_B together (one Adam), the critics frozen
    L_D = 1/2 [LS(D_A(b), 1) + LS(D_A(pool_B(fake_b)), 0)]
        + 1/2 [LS(D_B(a), 1) + LS(D_B(pool_A(fake_a)), 0)]
    update D_A and D_B together (one Adam)

The critics judge the fakes the generators made *before* their update (the reference's
order), through the 50-image pools: the generator loss hands its fakes on in the critic
side's model state, the critic loss queries the pools there (`engine.image_pool`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medda_jax.engine import image_pool


def lr_schedule(learning_rate: float, n_epochs: int, n_epochs_decay: int,
                steps_per_epoch: int):
  """The reference's linear policy: epoch e (from 0) trains at
  lr * (1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1)); an optimiser's update count
  gives the epoch (one G and one D update per iteration)."""

  def schedule(count):
    epoch = count // steps_per_epoch
    return learning_rate * (1.0 - jnp.maximum(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1.0))

  return schedule


def least_squares(scores: jax.Array, target: float) -> jax.Array:
  """LSGAN: mean squared distance of the patch scores to the target label."""
  return jnp.mean(jnp.square(scores.astype(jnp.float32) - target))


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def initial_critic_state(batch: int, image_shape, pool_size: int, dtype=jnp.float32) -> dict:
  """The critic side's model state: the two pools, and the slot for the fakes the
  generator update hands on (overwritten every iteration)."""
  return {"pool_a": image_pool.ImagePool.create(pool_size, image_shape, dtype),
          "pool_b": image_pool.ImagePool.create(pool_size, image_shape, dtype),
          "fake_a": jnp.zeros((batch, *image_shape), dtype),
          "fake_b": jnp.zeros((batch, *image_shape), dtype)}


def cyclegan_losses(generator, discriminator, s):
  """(critic_loss, generator_loss) in the GAN engine's contract, for
  `build_gan_chunk(..., generator_first=True)`. Batches are {"a", "b"} [B, H, W, C] in
  [-1, 1]; params["g"] = {"a": G_A, "b": G_B}, params["d"] = {"a": D_A, "b": D_B};
  `s` holds lambda_a, lambda_b and lambda_identity."""

  def translate(params, which, x):
    return generator.apply({"params": params["g"][which]}, x)

  def judge(params, which, x):
    return discriminator.apply({"params": params["d"][which]}, x)

  def generator_loss(params, model_state, batch, rng):
    del rng
    a, b = batch["a"], batch["b"]
    fake_b = translate(params, "a", a)
    rec_a = translate(params, "b", fake_b)
    fake_a = translate(params, "b", b)
    rec_b = translate(params, "a", fake_a)
    terms = {"gan_a": least_squares(judge(params, "a", fake_b), 1.0),
             "gan_b": least_squares(judge(params, "b", fake_a), 1.0),
             "cycle_a": s.lambda_a * l1(rec_a, a),
             "cycle_b": s.lambda_b * l1(rec_b, b)}
    if s.lambda_identity > 0:  # the reference skips both identity passes at 0
      terms["idt_a"] = s.lambda_identity * s.lambda_b * l1(translate(params, "a", b), b)
      terms["idt_b"] = s.lambda_identity * s.lambda_a * l1(translate(params, "b", a), a)
    slot = model_state["d"]
    handed_on = {**slot, "fake_a": jax.lax.stop_gradient(fake_a).astype(slot["fake_a"].dtype),
                 "fake_b": jax.lax.stop_gradient(fake_b).astype(slot["fake_b"].dtype)}
    return sum(terms.values()), ({**model_state, "d": handed_on}, terms)

  def critic_loss(params, model_state, batch, rng):
    d = model_state["d"]
    key_b, key_a = jax.random.split(rng)  # the reference queries pool B (D_A) first
    pool_b, fake_b = image_pool.query(d["pool_b"], d["fake_b"], key_b)
    pool_a, fake_a = image_pool.query(d["pool_a"], d["fake_a"], key_a)
    terms = {"d_a": 0.5 * (least_squares(judge(params, "a", batch["b"]), 1.0)
                           + least_squares(judge(params, "a", fake_b), 0.0)),
             "d_b": 0.5 * (least_squares(judge(params, "b", batch["a"]), 1.0)
                           + least_squares(judge(params, "b", fake_a), 0.0))}
    return terms["d_a"] + terms["d_b"], (
        {**model_state, "d": {**d, "pool_a": pool_a, "pool_b": pool_b}}, terms)

  return critic_loss, generator_loss
