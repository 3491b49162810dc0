"""The papers' method: SIFA (Chen et al., TMI 2020; reference code cchen-cc/SIFA) and the
SynthMix policy with its Mixup Inspector (seed 004), as losses of the GAN engine.

S is the labelled source modality, T the unlabelled target. Networks (`models/sifa.py`):
G translates S -> T; the encoder E and the decoder U form the T -> S generator U(E(.));
the segmentors C and C_ll read E's last and low-level features; D_T judges T-style
images, D_S S-style images (main head) and, on its auxiliary head, cycle-reconstructed
source images ("real") against translated ones ("fake"); D_P and D_P_ll judge the
segmentors' outputs (source-like predictions "real"); the Inspector I predicts a k x k
map of domains (1 = target) and a global share.

One iteration, in the reference's order, each sub-step its own gradient on the weights
the earlier sub-steps left (the forward pass re-run every time):

    fake_t = G(x_s), fake_s = U(E(x_t)), cyc_s = U(E(fake_t)), cyc_t = G(fake_s)
    cycle = 10 |cyc_s - x_s| + 10 |cyc_t - x_t|                       (means over pixels)
    1. G:       cycle + LS(D_T(fake_t), 1) [+ l_I L_mix(S_mix)]
    2. D_T:     1/2 [LS(D_T(x_t), 1) + LS(D_T(pool_T(fake_t)), 0)]
    3. E, C, C_ll:  CE + Dice of C(E(fake_t)) vs y_s + 0.1 (CE + Dice) of C_ll + 1e-4 L2
                + 0.1 L_U + 0.1 LS(D_P(C(E(x_t))), 1) + 0.01 LS(D_P_ll(C_ll(E(x_t))), 1)
                + 0.1 LS(D_S_aux(fake_s), 1)
    4. U:       L_U = cycle + LS(D_S_main(fake_s), 1) [+ l_I L_mix(T_mix)]
    5. D_S:     1/2 [LS(D_S_main(x_s), 1) + LS(D_S_main(pool_S(fake_s)), 0)]
                + 1/2 [LS(D_S_aux(cyc_s), 1) + LS(D_S_aux(pool_S(fake_s)), 0)]
    6. D_P:     1/2 [LS(D_P(C(E(fake_t))), 1) + LS(D_P(C(E(x_t))), 0)];  7. D_P_ll alike
    8. I (SynthMix only): l_I L_I

SynthMix: m in {0, 1}^{k x k} ~ Bernoulli(ratio) per image, M its nearest upsampling;
S_mix = M fake_t + (1 - M) x_s and T_mix = M x_t + (1 - M) fake_s mix an image with its own
translation (same anatomy), X_unal = M x_t + (1 - M) x_s two real images. With BCE(I, m) =
BCE(I_map, m) + BCE(I_glob, mean m):
    L_I   = BCE(I(x_s), 0) + BCE(I(x_t), 1) + BCE(I(X_unal), m)        (I trained, step 8)
    L_mix = BCE(I(S_mix), m) [G's part] + BCE(I(T_mix), m) [U's part]   (I frozen)
so a translated patch must read as the domain it imitates. Baseline SIFA is the same
iteration without L_mix and step 8 (`synthmix=False`).

Mapping to the engine (`engine.gan`, `generator_first=True`): side "g" = G (step 1),
side "d" = D_T (step 2), then the side updates seg (E, C, C_ll), u, d_s, d_p, d_p_ll and
inspector (steps 3-8), in that order, on the same batch. What a sub-step hands on travels
in the state's `model_state`: E's BatchNorm statistics ("seg"; every forward pass of E
runs in training mode and moves them, as the reference's is_training=1 does), the fakes
for the batch-level pools ("d" for pool_T, "d_s" for pool_S; `image_pool.query_batch`,
SIFA's 50-batch pool) and the iteration's masks ("g", drawn in step 1 from the state's
RNG and read by steps 3, 4 and 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from medda_jax import losses
from medda_jax.engine import image_pool


@dataclasses.dataclass(frozen=True)
class Nets:
  """The SIFA networks (and the Inspector with SynthMix)."""
  generator: nn.Module      # G: S -> T
  encoder: nn.Module        # E
  decoder: nn.Module        # U: with E, T -> S
  segmenter: nn.Module      # C (and C_ll: the same module on the low-level features)
  discriminator: nn.Module  # D_T, D_P, D_P_ll (one output channel)
  discriminator_aux: nn.Module  # D_S: [main, auxiliary]
  inspector: nn.Module | None = None


def least_squares(scores: jax.Array, target: float) -> jax.Array:
  """LSGAN: mean squared distance of the patch scores to the target label."""
  return jnp.mean(jnp.square(scores.astype(jnp.float32) - target))


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def l2_penalty(params) -> jax.Array:
  """tf.nn.l2_loss summed over a parameter tree: sum w^2 / 2."""
  return sum(0.5 * jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params))


def task_loss(logits: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
  """(weighted cross-entropy, Dice loss) of logits [B, H, W, K] against integer labels."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return (losses.class_weighted_cross_entropy(logits, onehot),
          losses.softmax_dice_loss(logits, onehot))


# --------------------------------------------------------------------------- SynthMix
def draw_masks(key: jax.Array, batch: int, k: int, ratio: float) -> jax.Array:
  """m [batch, k, k] in {0, 1}, each cell 1 (target appearance) with probability `ratio`."""
  return jax.random.bernoulli(key, ratio, (batch, k, k)).astype(jnp.float32)


def upsample_masks(m: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest upsampling of m [B, k, k] to [B, H, W, 1] (blocks of H/k x W/k pixels)."""
  k = m.shape[1]
  return jnp.repeat(jnp.repeat(m, size[0] // k, axis=1), size[1] // k, axis=2)[..., None]


def mix(m_up: jax.Array, where_one: jax.Array, where_zero: jax.Array) -> jax.Array:
  return m_up * where_one + (1.0 - m_up) * where_zero


def inspector_bce(inspector: nn.Module, params, images: jax.Array, m: jax.Array) -> jax.Array:
  """BCE(I_map(x), m) + BCE(I_glob(x), mean m): the map and the global head, 1:1."""
  cell_logits, global_logits = inspector.apply({"params": params}, images)
  target_share = jnp.mean(m, axis=(1, 2))
  return (jnp.mean(optax.sigmoid_binary_cross_entropy(cell_logits.astype(jnp.float32), m))
          + jnp.mean(optax.sigmoid_binary_cross_entropy(global_logits.astype(jnp.float32),
                                                        target_share)))


def inspector_loss(inspector: nn.Module, params, x_s, x_t, m) -> jax.Array:
  """L_I on real images only: all-source, all-target and their unaligned mix."""
  zeros, ones = jnp.zeros_like(m), jnp.ones_like(m)
  x_unal = mix(upsample_masks(m, x_s.shape[1:3]), x_t, x_s)
  return (inspector_bce(inspector, params, x_s, zeros)
          + inspector_bce(inspector, params, x_t, ones)
          + inspector_bce(inspector, params, x_unal, m))


# --------------------------------------------------------------------------- state
def initial_model_state(encoder_stats, batch: int, image_shape, pool_size: int,
                        synthmix: bool, k: int) -> dict:
  """model_state of the engine: E's statistics, the two batch pools with their hand-on
  slots, and (SynthMix) the iteration's masks."""
  def pool_side():
    return {"pool": image_pool.ImagePool.create(pool_size, (batch, *image_shape)),
            "fake": jnp.zeros((batch, *image_shape), jnp.float32)}
  state = {"g": {"mask": jnp.zeros((batch, k, k), jnp.float32)} if synthmix else {},
           "d": pool_side(), "seg": {"batch_stats": encoder_stats}, "u": {},
           "d_s": pool_side(), "d_p": {}, "d_p_ll": {}}
  if synthmix:
    state["inspector"] = {}
  return state


# --------------------------------------------------------------------------- losses
def sifa_losses(nets: Nets, s) -> tuple[Any, Any, dict]:
  """(critic_loss, generator_loss, side_losses) in the GAN engine's contract. Batches are
  {"source" [B, H, W, 1], "label" int [B, H, W], "target" [B, H, W, 1]} in [-1, 1]. `s`
  holds num_classes, lambda_cycle_s / _t, the segmentation objective's weights
  (weight_ll, weight_u, weight_adv_p, weight_adv_p_ll, weight_aux, weight_decay) and the
  SynthMix fields (synthmix, mask_k, mask_ratio, lambda_inspector)."""

  def translate(params, x):
    return nets.generator.apply({"params": params["g"]}, x)

  def encode(params, model_state, x):
    """E in training mode (batch statistics; the running ones move)."""
    (f, f_ll), updated = nets.encoder.apply(
        {"params": params["seg"]["e"], "batch_stats": model_state["seg"]["batch_stats"]}, x,
        train=True, mutable=["batch_stats"])
    return f, f_ll, {**model_state, "seg": {"batch_stats": updated["batch_stats"]}}

  def decode(params, f, x_in, rng):
    return nets.decoder.apply({"params": params["u"]}, f, x_in, deterministic=False,
                              rngs={"dropout": rng})

  def segment(params, which, f, size):
    return nets.segmenter.apply({"params": params["seg"][which]}, f, size)

  def judge(params, which, x):
    net = nets.discriminator_aux if which == "d_s" else nets.discriminator
    return net.apply({"params": params[which]}, x)

  def forward(params, model_state, batch, rng):
    """The translations every generator-side loss reads (each sub-step re-runs it)."""
    x_s, x_t = batch["source"], batch["target"]
    rng_s, rng_c = jax.random.split(rng)
    fake_t = translate(params, x_s)
    f_t, f_t_ll, model_state = encode(params, model_state, x_t)
    fake_s = decode(params, f_t, x_t, rng_s)
    f_ft, f_ft_ll, model_state = encode(params, model_state, fake_t)
    cyc_s = decode(params, f_ft, fake_t, rng_c)
    cyc_t = translate(params, fake_s)
    out = dict(fake_t=fake_t, fake_s=fake_s, cyc_s=cyc_s, cyc_t=cyc_t, f_t=f_t, f_t_ll=f_t_ll,
               f_ft=f_ft, f_ft_ll=f_ft_ll)
    return out, model_state

  def cycle(fw, batch):
    return (s.lambda_cycle_s * l1(fw["cyc_s"], batch["source"])
            + s.lambda_cycle_t * l1(fw["cyc_t"], batch["target"]))

  def mix_loss(params, m, where_one, where_zero):
    """lambda_I BCE(I(mix), m), the Inspector frozen (only the caller's side is updated)."""
    mixed = mix(upsample_masks(m, where_one.shape[1:3]), where_one, where_zero)
    return s.lambda_inspector * inspector_bce(nets.inspector, params["inspector"], mixed, m)

  def u_objective(params, fw, batch, model_state):
    """L_U, U's loss (also 0.1 of the segmentation objective): cycle + LSGAN of D_S's main
    head [+ the T_mix part of L_mix]."""
    main = judge(params, "d_s", fw["fake_s"])[..., 0]
    terms = {"cycle": cycle(fw, batch), "gan_s": least_squares(main, 1.0)}
    if s.synthmix:
      terms["mix_t"] = mix_loss(params, model_state["g"]["mask"], batch["target"], fw["fake_s"])
    return terms

  # Step 1: G.
  def generator_loss(params, model_state, batch, rng):
    rng_fw, rng_mask = jax.random.split(rng)
    fw, model_state = forward(params, model_state, batch, rng_fw)
    terms = {"cycle": cycle(fw, batch),
             "gan_t": least_squares(judge(params, "d", fw["fake_t"]), 1.0)}
    if s.synthmix:
      m = draw_masks(rng_mask, batch["source"].shape[0], s.mask_k, s.mask_ratio)
      terms["mix_s"] = mix_loss(params, m, fw["fake_t"], batch["source"])
      model_state = {**model_state, "g": {"mask": m}}
    model_state = {**model_state, "d": {**model_state["d"],
                                        "fake": jax.lax.stop_gradient(fw["fake_t"])}}
    return sum(terms.values()), (model_state, terms)

  # Step 2: D_T on the target images and the pooled translations.
  def critic_loss(params, model_state, batch, rng):
    side = model_state["d"]
    pool, fake = image_pool.query_batch(side["pool"], side["fake"], rng)
    loss = losses.least_squares_critic_loss(judge(params, "d", batch["target"]), judge(params, "d", fake))
    return loss, ({**model_state, "d": {**side, "pool": pool}}, {"d_t": loss})

  # Step 3: E, C and C_ll.
  def seg_loss(params, model_state, batch, rng):
    fw, model_state = forward(params, model_state, batch, rng)
    size = batch["source"].shape[1:3]
    ce, dice = task_loss(segment(params, "c", fw["f_ft"], size), batch["label"], s.num_classes)
    ce_ll, dice_ll = task_loss(segment(params, "c_ll", fw["f_ft_ll"], size), batch["label"],
                               s.num_classes)
    pred_t = segment(params, "c", fw["f_t"], size)
    pred_t_ll = segment(params, "c_ll", fw["f_t_ll"], size)
    terms = {"ce": ce, "dice": dice, "ce_ll": s.weight_ll * ce_ll,
             "dice_ll": s.weight_ll * dice_ll,
             "l2": s.weight_decay * l2_penalty(params["seg"]),
             "u": s.weight_u * sum(u_objective(params, fw, batch, model_state).values()),
             "adv_p": s.weight_adv_p * least_squares(judge(params, "d_p", pred_t), 1.0),
             "adv_p_ll": s.weight_adv_p_ll * least_squares(judge(params, "d_p_ll", pred_t_ll),
                                                           1.0),
             "aux": s.weight_aux * least_squares(judge(params, "d_s", fw["fake_s"])[..., 1],
                                                 1.0)}
    return sum(terms.values()), (model_state, terms)

  # Step 4: U.
  def u_loss(params, model_state, batch, rng):
    fw, model_state = forward(params, model_state, batch, rng)
    terms = u_objective(params, fw, batch, model_state)
    model_state = {**model_state, "d_s": {**model_state["d_s"],
                                          "fake": jax.lax.stop_gradient(fw["fake_s"])}}
    return sum(terms.values()), (model_state, terms)

  # Step 5: D_S, main head on source vs pooled translations, auxiliary head on
  # reconstructed vs pooled translations.
  def d_s_loss(params, model_state, batch, rng):
    rng_pool, rng_u = jax.random.split(rng)
    side = model_state["d_s"]
    pool, fake = image_pool.query_batch(side["pool"], side["fake"], rng_pool)
    fake_t = translate(params, batch["source"])
    f_ft, _, model_state = encode(params, model_state, fake_t)
    cyc_s = decode(params, f_ft, fake_t, rng_u)
    real, pooled, cyc = (judge(params, "d_s", x) for x in (batch["source"], fake, cyc_s))
    terms = {"main": losses.least_squares_critic_loss(real[..., 0], pooled[..., 0]),
             "aux": losses.least_squares_critic_loss(cyc[..., 1], pooled[..., 1])}
    model_state = {**model_state, "d_s": {**side, "pool": pool}}
    return sum(terms.values()), (model_state, terms)

  # Steps 6 and 7: D_P and D_P_ll, source-like predictions "real", target ones "fake".
  def prediction_critic_loss(which, features):
    def loss_fn(params, model_state, batch, rng):
      del rng
      size = batch["source"].shape[1:3]
      fake_t = translate(params, batch["source"])
      f_t, f_t_ll, model_state = encode(params, model_state, batch["target"])
      f_ft, f_ft_ll, model_state = encode(params, model_state, fake_t)
      by_name = {"f_t": f_t, "f_t_ll": f_t_ll, "f_ft": f_ft, "f_ft_ll": f_ft_ll}
      head = "c" if which == "d_p" else "c_ll"
      source_like = segment(params, head, by_name[features[0]], size)
      target = segment(params, head, by_name[features[1]], size)
      loss = losses.least_squares_critic_loss(judge(params, which, source_like),
                                  judge(params, which, target))
      return loss, (model_state, {"loss_" + which: loss})
    return loss_fn

  # Step 8: the Inspector, on real images only.
  def inspector_side_loss(params, model_state, batch, rng):
    del rng
    loss = s.lambda_inspector * inspector_loss(nets.inspector, params["inspector"],
                                               batch["source"], batch["target"],
                                               model_state["g"]["mask"])
    return loss, (model_state, {"l_i": loss})

  sides = {"seg": seg_loss, "u": u_loss, "d_s": d_s_loss,
           "d_p": prediction_critic_loss("d_p", ("f_ft", "f_t")),
           "d_p_ll": prediction_critic_loss("d_p_ll", ("f_ft_ll", "f_t_ll"))}
  if s.synthmix:
    sides["inspector"] = inspector_side_loss
  return critic_loss, generator_loss, sides
