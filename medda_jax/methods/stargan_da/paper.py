"""The paper's method (Valliani et al.): StarGAN's WGAN-GP losses with domain classification
and cycle reconstruction, and CyCADA's semantic consistency through the frozen task
networks, with the learning-rate schedule of the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from medda_jax import losses
from medda_jax.engine.classifier import apply_task
from medda_jax.models.stargan import StarDiscriminator, StarGenerator


SOURCE, TARGET = 0, 1  # domain indices of a pair-specific StarGAN


# --------------------------------------------------------------------------- StarGAN
def lr_schedule(lr: float, decay_from: int, total: int, iters_per_update: int):
  """Constant `lr` up to D-iteration `decay_from`, then linear to 0 at `total`; an
  optimiser's update count times `iters_per_update` gives its D-iteration (G: n_critic)."""

  def schedule(count):
    it = count * iters_per_update
    frac = jnp.clip((total - it) / max(total - decay_from, 1), 0.0, 1.0)
    return lr * jnp.where(it < decay_from, 1.0, frac)

  return schedule


def stargan_losses(generator: StarGenerator, critic: StarDiscriminator, task_net, s):
  """(critic_loss, generator_loss, ft_loss, fs_loss) in the GAN engine's contract.

  A batch is {"x_s", "y_s", "x_t"}: source images with labels and target images, each half
  of the batch. Real images carry their own domain (c_org: source 0, target 1) and are
  translated to the other one (c_trg), as the spec fixes StarGAN's random target labels for
  two domains. `s` holds the weights lambda_gp, lambda_cls, lambda_rec and lambda_sem.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels

  def domains(batch):
    b = batch["x_s"].shape[0]
    org = jnp.concatenate([jnp.full((b,), SOURCE), jnp.full((b,), TARGET)])
    return jnp.concatenate([batch["x_s"], batch["x_t"]]), org, 1 - org

  def translate(params, x, c):
    return generator.apply({"params": params["g"]}, x, c)

  def judge(params, x):
    return critic.apply({"params": params["d"]}, x)

  def classify(params, model_state, side, x):  # frozen inside the GAN losses: eval mode
    return apply_task(task_net, params[side], model_state[side], x, train=False)[0]

  def critic_loss(params, model_state, batch, rng):
    x, org, trg = domains(batch)
    fake = jax.lax.stop_gradient(translate(params, x, trg))
    src, cls = judge(params, jnp.concatenate([x, fake]))
    n = x.shape[0]
    adv = losses.wgan_critic_loss(src[:n], src[n:])
    gp = losses.gradient_penalty(lambda im: judge(params, im)[0].sum(axis=(1, 2)), x, fake, rng)
    cls_loss = ce(cls[:n], org).mean()
    loss = adv + s.lambda_gp * gp + s.lambda_cls * cls_loss
    return loss, (model_state, {"wasserstein": -adv, "gp": gp, "cls": cls_loss})

  def generator_loss(params, model_state, batch, rng):
    del rng
    x, org, trg = domains(batch)
    b = batch["x_s"].shape[0]
    fake = translate(params, x, trg)
    src, cls = judge(params, fake)
    adv = losses.wgan_generator_loss(src)
    cls_loss = ce(cls, trg).mean()
    rec = translate(params, fake, org)
    rec_loss = jnp.mean(jnp.abs(x - rec))
    sem = jnp.zeros(())
    if s.lambda_sem:  # 0: plain StarGAN, the task networks are never run
      pseudo = jnp.argmax(classify(params, model_state, "ft", batch["x_t"]), axis=-1)
      sem = (ce(classify(params, model_state, "fs", rec[:b]), batch["y_s"]).mean()
             + ce(classify(params, model_state, "ft", fake[:b]), batch["y_s"]).mean()
             + ce(classify(params, model_state, "fs", fake[b:]), pseudo).mean())
    loss = adv + s.lambda_cls * cls_loss + s.lambda_rec * rec_loss + s.lambda_sem * sem
    return loss, (model_state, {"adv": adv, "cls": cls_loss, "rec": rec_loss, "sem": sem})

  def task_loss(side, images_fn):
    def loss_fn(params, model_state, batch, rng):
      logits, side_state = apply_task(task_net, params[side], model_state[side],
                                      images_fn(params, batch), True, rng)
      loss = ce(logits, batch["y_s"]).mean()
      return loss, ({**model_state, side: side_state}, {})
    return loss_fn

  # F_T learns the source labels on translated source images; F_S keeps training on real
  # source images (CyCADA trains its classifier alongside).
  ft_loss = task_loss("ft", lambda p, b: jax.lax.stop_gradient(
      translate(p, b["x_s"], jnp.full((b["x_s"].shape[0],), TARGET))))
  fs_loss = task_loss("fs", lambda p, b: b["x_s"])
  return critic_loss, generator_loss, ft_loss, fs_loss
