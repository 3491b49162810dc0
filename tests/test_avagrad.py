"""AvaGrad against a plain NumPy transcription of the reference `AvaGrad` / `AvaGradW`
classes (lolemacs/avagrad, optimizers.py), in float64, on a random quadratic."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64

from medda_jax.optim.avagrad import avagrad, scale_by_avagrad

SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 1, 3)}


class ReferenceAvaGrad:
  """The reference `step()`, one parameter tensor at a time, as the torch code loops.
  `decoupled` is AvaGradW; `paper` takes gamma from this step's own denominators."""

  def __init__(self, params, lr, betas=(0.9, 0.999), weight_decay=0.0, eps=0.1,
               decoupled=False, paper=False):
    self.params = [p.copy() for p in params]
    self.lr, self.betas, self.wd, self.eps = lr, betas, weight_decay, eps
    self.decoupled, self.paper = decoupled, paper
    self.gamma = None
    self.state = [dict(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
                  for p in params]

  def step(self, grads, lr):
    beta1, beta2 = self.betas
    squared_norm, num_params = 0.0, 0.0
    gamma = self.gamma
    if self.paper and self.state[0]["step"] >= 1:
      # gamma from the denominators this very step uses
      total, count = 0.0, 0
      for st in self.state:
        prev_bc2 = 1 - beta2 ** st["step"]
        denom = np.sqrt(st["exp_avg_sq"]) / math.sqrt(prev_bc2) + self.eps
        total += np.sum(denom ** -2.0)
        count += denom.size
      gamma = 1.0 / math.sqrt(total / count)
    for i, p in enumerate(self.params):
      grad = grads[i].copy()
      st = self.state[i]
      st["step"] += 1
      bias_correction1 = 1 - beta1 ** st["step"]
      bias_correction2 = 1 - beta2 ** st["step"]
      prev_bias_correction2 = 1 - beta2 ** (st["step"] - 1)
      if self.wd != 0 and not self.decoupled:
        grad = grad + self.wd * p
      st["exp_avg"] = beta1 * st["exp_avg"] + (1 - beta1) * grad
      sqrt_exp_avg_sq = np.sqrt(st["exp_avg_sq"])
      if st["step"] > 1:
        denom = sqrt_exp_avg_sq / math.sqrt(prev_bias_correction2) + self.eps
        step_size = gamma * lr / bias_correction1
        if self.wd != 0 and self.decoupled:
          p *= 1 - lr * self.wd
        p -= step_size * st["exp_avg"] / denom
      st["exp_avg_sq"] = beta2 * st["exp_avg_sq"] + (1 - beta2) * grad * grad
      param_wise_lr = sqrt_exp_avg_sq / math.sqrt(bias_correction2) + self.eps
      squared_norm += np.sum(param_wise_lr ** -2.0)  # torch: norm(-2) ** -2
      num_params += param_wise_lr.size
    self.gamma = 1.0 / math.sqrt(squared_norm / num_params)


def quadratic(seed=0):
  """f(w) = 0.5 (w - c)^T A (w - c) over the concatenation of all leaves (A couples them)."""
  rng = np.random.default_rng(seed)
  n = sum(int(np.prod(s)) for s in SHAPES.values())
  q = rng.normal(size=(n, n))
  a = q @ q.T / n + 0.1 * np.eye(n)
  c = rng.normal(size=n)
  w0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  return a, c, w0


def flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(tree[k]).reshape(-1) for k in SHAPES])


def unflat(vec):
  out, start = {}, 0
  for k, s in SHAPES.items():
    size = int(np.prod(s))
    out[k] = vec[start:start + size].reshape(s)
    start += size
  return out


def schedule(count):
  return 0.5 * 0.8 ** count  # any schedule: the reference reads the group's lr per step


@pytest.mark.parametrize("normalizer", ["reference", "paper"])
@pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (0.05, False), (0.05, True)])
def test_ten_steps_agree_with_the_reference_in_float64(normalizer, weight_decay, decoupled):
  a, c, w0 = quadratic()
  ref = ReferenceAvaGrad([w0[k] for k in SHAPES], lr=None, weight_decay=weight_decay,
                         eps=0.1, decoupled=decoupled, paper=normalizer == "paper")
  with enable_x64():
    tx = avagrad(schedule, eps=0.1, weight_decay=weight_decay, decoupled=decoupled,
                 normalizer=normalizer)
    params = jax.tree.map(jnp.asarray, w0)
    state = tx.init(params)
    for t in range(10):
      grads = unflat(a @ (flat(params) - c))
      ref.step([np.asarray(grads[k]) for k in SHAPES], schedule(t))
      updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
      params = optax.apply_updates(params, updates)
      assert params["a"].dtype == jnp.float64
      np.testing.assert_allclose(flat(params), np.concatenate(
          [p.reshape(-1) for p in ref.params]), rtol=1e-12, atol=1e-14, err_msg=f"step {t + 1}")


def test_the_first_step_moves_nothing():
  _, _, w0 = quadratic()
  with enable_x64():
    tx = avagrad(10.0, weight_decay=0.0)
    params = jax.tree.map(jnp.asarray, w0)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    updates, _ = tx.update(grads, state, params)
    assert all(float(jnp.abs(u).max()) > 0.0 for u in jax.tree.leaves(updates))


def test_gamma_is_global_over_the_whole_tree():
  """The same vector split into three leaves or kept as one gives the same steps; a
  per-leaf AvaGrad (gamma per tensor) does not."""
  a, c, w0 = quadratic(1)
  with enable_x64():
    split_tx, whole_tx = scale_by_avagrad(), scale_by_avagrad()
    per_leaf = optax.multi_transform({k: scale_by_avagrad() for k in SHAPES},
                                     {k: k for k in SHAPES})
    split = jax.tree.map(jnp.asarray, w0)
    whole = {"w": jnp.asarray(flat(w0))}
    leafwise = dict(split)
    s1, s2, s3 = split_tx.init(split), whole_tx.init(whole), per_leaf.init(leafwise)
    for _ in range(6):
      u1, s1 = split_tx.update(unflat(a @ (flat(split) - c)), s1)
      u2, s2 = whole_tx.update({"w": a @ (whole["w"] - c)}, s2)
      u3, s3 = per_leaf.update(unflat(a @ (flat(leafwise) - c)), s3)
      np.testing.assert_allclose(flat(u1), np.asarray(u2["w"]), rtol=1e-12, atol=1e-15)
      split = optax.apply_updates(split, jax.tree.map(lambda u: -u, u1))
      whole = {"w": whole["w"] - u2["w"]}
      leafwise = optax.apply_updates(leafwise, jax.tree.map(lambda u: -u, u3))
    assert np.abs(flat(leafwise) - flat(split)).max() > 1e-6


def test_large_eps_is_sgd_with_bias_corrected_ema_momentum():
  a, c, w0 = quadratic(2)
  b1, lr = 0.9, 0.3
  with enable_x64():
    tx = avagrad(lr, b1=b1, eps=1e8)
    params = jax.tree.map(jnp.asarray, w0)
    state = tx.init(params)
    w, m = flat(w0), np.zeros_like(flat(w0))
    for t in range(1, 9):
      g = a @ (w - c)
      m = b1 * m + (1 - b1) * g
      if t > 1:
        w = w - lr * m / (1 - b1 ** t)
      updates, state = tx.update(unflat(g), state, params)
      params = optax.apply_updates(params, updates)
      np.testing.assert_allclose(flat(params), w, rtol=1e-6, atol=1e-8, err_msg=f"step {t}")


def test_a_bad_normalizer_is_refused():
  with pytest.raises(ValueError, match="normalizer"):
    scale_by_avagrad(normalizer="per_tensor")
