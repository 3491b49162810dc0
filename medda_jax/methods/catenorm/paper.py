"""CateNorm's algorithm (Xiao et al., DART 2022, Appendix Algorithm 1 and the code's
`train.py`), as pure functions of a train state.

Parameters fall in three groups by path: `cn` (the CateNorm convolutions), `bn` (the
ordinary norms' scale / bias inside the CNRBs) and `shared` (everything else: all
convolutions, and the norms of the other layers, which both passes use). Each group has
its own Adam state. One iteration is two half-steps in one jitted step:

  1. BN pass  y_B = F(x; shared, bn)             update shared + bn with grad L(y, y_B)
  2. m = stop_gradient(softmax(y_B))   (the pre-update forward, as in the code)
     CN pass  y_C = F(x; shared', cn | m)        update shared + cn with grad L(y, y_C),
                                                  gradients clipped to +-0.1 (code)

so a group a half-step does not train is not moved at all (no stale Adam momentum).
Stage 1 (and every baseline) runs half-step 1 alone. The learning rate of all three
states is base_lr x the scale of one reduce-on-plateau state fed the iteration's hard-Dice
loss (the code: every 50 iterations on the mean training hard-Dice loss, factor 0.5,
patience 5). Inference: BN pass -> softmax -> CN pass -> argmax.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from medda_jax.engine.meta import all_finite, run_steps
from medda_jax.models.dualnorm_unet import DualNormUNet

GROUPS = ("shared", "bn", "cn")
SEP = "."  # joins a parameter's path into its key in a group


# --------------------------------------------------------------------------- loss
def dice_loss(probs: jax.Array, onehot: jax.Array) -> jax.Array:
  """The code's Dice loss. Two classes: per sample and class
  (2 sum(y p) + 1e-6) / (sum p + sum y + 1e-6), averaged over samples and both classes.
  More classes: per class over the whole batch with squared denominators,
  2 sum(y p) / sum(y^2 + p^2) (the paper's form), averaged over classes."""
  if onehot.shape[-1] == 2:
    inter = jnp.sum(probs * onehot, axis=(1, 2))
    total = jnp.sum(probs, axis=(1, 2)) + jnp.sum(onehot, axis=(1, 2))
    return 1.0 - jnp.mean((2.0 * inter + 1e-6) / (total + 1e-6))
  inter = jnp.sum(probs * onehot, axis=(0, 1, 2))
  total = jnp.sum(probs * probs, axis=(0, 1, 2)) + jnp.sum(onehot * onehot, axis=(0, 1, 2))
  return 1.0 - jnp.mean((2.0 * inter + 1e-6) / (total + 1e-6))


def segmentation_loss(logits: jax.Array, labels: jax.Array, dice_weight: float) -> jax.Array:
  """L = lambda * Dice + (1 - lambda) * CE (paper eq. 4; lambda 1 prostate, 0.5 abdomen)."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  dice = dice_loss(jax.nn.softmax(logits, axis=-1), onehot)
  ce = jnp.mean(optax.softmax_cross_entropy(logits, onehot))
  return dice_weight * dice + (1.0 - dice_weight) * ce


def hard_dice_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The Dice loss of the argmax prediction: what the code's scheduler watches."""
  n = logits.shape[-1]
  return dice_loss(jax.nn.one_hot(jnp.argmax(logits, -1), n), jax.nn.one_hot(labels, n))


# --------------------------------------------------------------------------- partition
def group_of(path: tuple[str, ...], cnrb_blocks: Sequence[str]) -> str:
  """'cn' for CateNorm parameters, 'bn' for the ordinary norms of a CNRB, else 'shared'."""
  if any(p.startswith("cn_") for p in path):
    return "cn"
  if path[0] in {f"{b}_res" for b in cnrb_blocks} and path[1] in ("norm_0", "norm_1"):
    return "bn"
  return "shared"


def split_params(params, cnrb_blocks: Sequence[str]) -> dict[str, dict[str, jax.Array]]:
  """{group: {dotted path: array}} (every group present, possibly empty)."""
  out = {g: {} for g in GROUPS}
  for path, x in traverse_util.flatten_dict(params).items():
    out[group_of(path, cnrb_blocks)][SEP.join(path)] = x
  return out


def merge_params(groups: dict[str, dict[str, jax.Array]]):
  flat = {tuple(k.split(SEP)): x for g in groups.values() for k, x in g.items()}
  return traverse_util.unflatten_dict(flat)


# --------------------------------------------------------------------------- state
def adam(b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """Adam with its learning rate in the state (set every step from the plateau scale)."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=0.0, b1=b1, b2=b2)


def plateau(every: int, factor: float = 0.5, patience: int = 5, min_lr: float = 1e-5,
            learning_rate: float = 1e-3) -> optax.GradientTransformationExtraArgs:
  """The code's schedule: the mean hard-Dice loss of `every` iterations, x factor after
  `patience` windows without a relative improvement of 1e-4, not below min_lr."""
  return optax.contrib.reduce_on_plateau(factor=factor, patience=patience, rtol=1e-4,
                                         accumulation_size=every,
                                         min_scale=min(1.0, min_lr / learning_rate))


@flax.struct.dataclass
class CateNormState:
  params: Any           # the network's parameters (all groups)
  opt_state: dict       # {group: Adam state over that group's {path: array}}
  plateau: Any          # reduce-on-plateau state (its scale multiplies base_lr)
  base_lr: jax.Array
  step: jax.Array
  model_state: Any      # {"batch_stats": ...}
  rng: jax.Array


def create_state(variables, cnrb_blocks, learning_rate: float, schedule, *, b1=0.9, b2=0.999,
                 seed: int = 0) -> CateNormState:
  tx = adam(b1, b2)
  groups = split_params(variables["params"], cnrb_blocks)
  return CateNormState(
      params=variables["params"], opt_state={g: tx.init(groups[g]) for g in GROUPS},
      plateau=schedule.init(jnp.zeros(())), base_lr=jnp.asarray(learning_rate, jnp.float32),
      step=jnp.zeros((), jnp.int32), model_state={"batch_stats": variables.get("batch_stats", {})},
      rng=jax.random.PRNGKey(seed))


def _with_lr(opt_state, lr):
  hyper = dict(opt_state.hyperparams, learning_rate=lr)
  return opt_state._replace(hyperparams=hyper)


def _adam_update(tx, grads, opt_state, params, lr):
  updates, opt_state = tx.update(grads, _with_lr(opt_state, lr), params)
  return optax.apply_updates(params, updates), opt_state


# --------------------------------------------------------------------------- step
def build_train_step(model: DualNormUNet, *, catenorm: bool, dice_weight: float,
                     clip_value: float, schedule, b1: float = 0.9,
                     b2: float = 0.999) -> Callable:
  """`step(state, batch) -> (state, metrics)`: half-step 1 alone (`catenorm=False`: stage 1
  and the baselines) or both half-steps. batch: images [B, H, W, C] float32, labels
  [B, H, W] int32, domains [B] int32."""
  tx = adam(b1, b2)
  cnrb = tuple(model.cnrb_blocks)

  def forward(params, stats, batch, mask):
    logits, mutated = model.apply({"params": params, "batch_stats": stats}, batch["images"],
                                  mask, True, batch["domains"], mutable=["batch_stats"])
    return logits, mutated.get("batch_stats", {})

  def half_step(groups, opt_state, stats, batch, trained, mask, lr, clip):
    """One Adam update of the groups in `trained` on the loss of one pass."""
    def loss_fn(train_groups):
      params = merge_params(dict(groups, **train_groups))
      logits, new_stats = forward(params, stats, batch, mask)
      return segmentation_loss(logits, batch["labels"], dice_weight), (logits, new_stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {g: groups[g] for g in trained})
    if clip:
      grads = jax.tree.map(lambda g: jnp.clip(g, -clip_value, clip_value), grads)
    groups, opt_state = dict(groups), dict(opt_state)
    for g in trained:
      groups[g], opt_state[g] = _adam_update(tx, grads[g], opt_state[g], groups[g], lr)
    return groups, opt_state, stats, loss, logits

  def step(state: CateNormState, batch):
    lr = state.base_lr * state.plateau.scale
    groups = split_params(state.params, cnrb)
    stats = state.model_state["batch_stats"]
    groups, opt_state, stats, loss_bn, logits_bn = half_step(
        groups, state.opt_state, stats, batch, ("shared", "bn"), None, lr, clip=False)
    metrics = {"loss_bn": loss_bn}
    final_logits, loss = logits_bn, loss_bn
    if catenorm:
      mask = jax.lax.stop_gradient(jax.nn.softmax(logits_bn, axis=-1))
      groups, opt_state, stats, loss_cn, final_logits = half_step(
          groups, opt_state, stats, batch, ("shared", "cn"), mask, lr, clip=True)
      metrics["loss_cn"] = loss = loss_cn
    hard = hard_dice_loss(final_logits, batch["labels"])
    _, plateau_state = schedule.update(jnp.zeros(()), state.plateau, value=hard)
    state = state.replace(params=merge_params(groups), opt_state=opt_state,
                          plateau=plateau_state, step=state.step + 1,
                          model_state={"batch_stats": stats})
    return state, dict(metrics, loss=loss, hard_dice_loss=hard, lr=lr)

  return step


def chunk_of(step: Callable, inner_loop: str) -> Callable:
  """`chunk(state, batches)`: `step` over the leading axis of `batches` (a scan, or unrolled
  by the host executor; one step is never wrapped in a loop), metrics averaged, plus
  `finite` (loss and parameters) for the loop's NaN stop."""
  def chunk(state, batches):
    state, metrics = run_steps(step, state, batches, inner_loop)
    finite = all_finite(metrics["loss"]) & all_finite(state.params)
    return state, dict(jax.tree.map(jnp.mean, metrics), finite=finite)
  return chunk


# --------------------------------------------------------------------------- inference
def predict_labels(model: DualNormUNet, catenorm: bool) -> Callable:
  """`fn(variables, x) -> (BN-pass labels, final labels)`: for CateNorm the BN pass,
  softmax, the CateNorm pass and argmax of each; for a baseline its one pass twice."""
  def fn(variables, x):
    images, domains = x["images"], x["domains"]
    if catenorm:
      bn_logits, cn_logits = model.apply(variables, images, False, domains,
                                         method=DualNormUNet.both_passes)
    else:
      bn_logits = cn_logits = model.apply(variables, images, None, False, domains)
    return (jnp.argmax(bn_logits, -1).astype(jnp.int8),
            jnp.argmax(cn_logits, -1).astype(jnp.int8))
  return fn


def stage2_variables(stage1: dict, fresh: dict, cnrb_blocks) -> dict:
  """Stage 2's start: shared and BN parameters (and their statistics) from stage 1, the
  CateNorm branch (parameters and statistics) freshly initialised."""
  params = split_params(fresh["params"], cnrb_blocks)
  old = split_params(stage1["params"], ())
  for g in ("shared", "bn"):
    params[g] = {k: old["shared"][k] for k in params[g]}
  fresh_stats = traverse_util.flatten_dict(fresh["batch_stats"])
  old_stats = traverse_util.flatten_dict(stage1["batch_stats"])
  stats = {k: (v if any(p.startswith("cn_") for p in k) else old_stats[k])
           for k, v in fresh_stats.items()}
  return {"params": merge_params(params), "batch_stats": traverse_util.unflatten_dict(stats)}
