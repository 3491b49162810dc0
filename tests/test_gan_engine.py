"""The adversarial engine: losses with known answers, spectral norm against the SVD, and
the jitted chunk (scan and unrolled) against the same updates made one by one in Python."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medda_jax import losses
from medda_jax.engine import gan
from medda_jax.models.wgan import Critic, Generator

SIZE, LATENT, BATCH = 8, 6, 4


def test_gradient_penalty_of_a_linear_critic_is_the_squared_norm_gap():
  # f(x) = <w, x> has gradient w at every point: GP = (||w|| - 1)^2 exactly.
  w = jnp.arange(1.0, 13.0).reshape(1, 2, 2, 3) / 10.0
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real = jax.random.normal(jax.random.key(0), (5, 2, 2, 3))
  fake = jax.random.normal(jax.random.key(1), (5, 2, 2, 3))
  gp = losses.gradient_penalty(critic, real, fake, jax.random.key(2))
  expected = (np.sqrt(np.sum(np.square(np.asarray(w)))) - 1.0) ** 2
  np.testing.assert_allclose(gp, expected, rtol=1e-6)


def test_gradient_penalty_of_a_quadratic_critic_uses_each_interpolate():
  # f(x) = ||x||^2 / 2 has gradient x: GP = mean_i (||x_hat_i|| - 1)^2.
  real = np.random.default_rng(0).normal(size=(6, 3, 3, 1)).astype(np.float32)
  fake = np.random.default_rng(1).normal(size=(6, 3, 3, 1)).astype(np.float32)
  rng = jax.random.key(3)
  critic = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))
  gp = losses.gradient_penalty(critic, jnp.asarray(real), jnp.asarray(fake), rng)
  eps = np.asarray(jax.random.uniform(rng, (6, 1, 1, 1)))
  x_hat = eps * real + (1 - eps) * fake
  expected = np.mean([(np.linalg.norm(x_hat[i]) - 1.0) ** 2 for i in range(6)])
  np.testing.assert_allclose(gp, expected, rtol=1e-5)


def test_adversarial_losses_match_their_formulas():
  real = jnp.array([0.5, -1.0, 2.0])
  fake = jnp.array([-0.5, 1.5, 0.0])
  sig = lambda v: 1 / (1 + np.exp(-np.asarray(v)))
  np.testing.assert_allclose(losses.wgan_critic_loss(real, fake), 1.0 / 3 - 1.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(losses.wgan_generator_loss(fake), -1.0 / 3, rtol=1e-6)
  np.testing.assert_allclose(losses.least_squares_critic_loss(real, fake),
                             0.5 * (np.mean((np.asarray(real) - 1) ** 2)
                                    + np.mean(np.asarray(fake) ** 2)), rtol=1e-6)
  np.testing.assert_allclose(losses.least_squares_generator_loss(fake),
                             np.mean((np.asarray(fake) - 1) ** 2), rtol=1e-6)
  np.testing.assert_allclose(losses.nonsaturating_critic_loss(real, fake),
                             -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(fake))),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.nonsaturating_generator_loss(fake),
                             -np.mean(np.log(sig(fake))), rtol=1e-5)


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_spectral_norm_converges_to_the_largest_singular_value(layer):
  inner = nn.Dense(7) if layer == "dense" else nn.Conv(5, (3, 3))
  module = nn.SpectralNorm(inner)
  x = jnp.ones((2, 6) if layer == "dense" else (2, 6, 6, 4))
  variables = module.init(jax.random.key(0), x, update_stats=True)
  stats = variables["batch_stats"]
  for _ in range(60):  # one power iteration per call
    _, updated = module.apply({"params": variables["params"], "batch_stats": stats}, x,
                              update_stats=True, mutable=["batch_stats"])
    stats = updated["batch_stats"]
  kernel = np.asarray(variables["params"]["layer_instance"]["kernel"])
  matrix = kernel.reshape(-1, kernel.shape[-1])
  top = np.linalg.svd(matrix, compute_uv=False)[0]
  sigma = [v for path, v in jax.tree_util.tree_leaves_with_path(stats)
           if "sigma" in jax.tree_util.keystr(path)]
  assert len(sigma) == 1
  np.testing.assert_allclose(float(sigma[0]), top, rtol=1e-4)
  # The normalised kernel the layer uses has spectral norm 1.
  np.testing.assert_allclose(np.linalg.svd(matrix / float(sigma[0]), compute_uv=False)[0], 1.0,
                             rtol=1e-4)


def _wgan_gp_losses(generator, critic, gp_weight=10.0):
  """WGAN-GP losses in the engine's contract, written for small test networks."""

  def fakes(params, model_state, z):
    out, updated = generator.apply({"params": params["g"], **model_state["g"]}, z, train=True,
                                   mutable=["batch_stats"])
    return out, updated

  def critic_loss(params, model_state, batch, rng):
    z_rng, gp_rng = jax.random.split(rng)
    fake, g_state = fakes(params, model_state, jax.random.normal(z_rng, (BATCH, LATENT)))
    fake = jax.lax.stop_gradient(fake)
    d_vars = {"params": params["d"], **model_state["d"]}
    real_scores, d_state = critic.apply(d_vars, batch["image"], update_stats=True,
                                        mutable=["batch_stats"])
    fake_scores = critic.apply({"params": params["d"], **d_state}, fake, update_stats=False)
    score_fn = lambda x: critic.apply({"params": params["d"], **d_state}, x, update_stats=False)
    gp = losses.gradient_penalty(score_fn, batch["image"], fake, gp_rng)
    loss = losses.wgan_critic_loss(real_scores, fake_scores) + gp_weight * gp
    return loss, ({"g": g_state, "d": d_state}, {"gp": gp})

  def generator_loss(params, model_state, batch, rng):
    del batch
    fake, g_state = fakes(params, model_state, jax.random.normal(rng, (BATCH, LATENT)))
    scores = critic.apply({"params": params["d"], **model_state["d"]}, fake, update_stats=False)
    return losses.wgan_generator_loss(scores), ({"g": g_state, "d": model_state["d"]}, {})

  return critic_loss, generator_loss


def _setup(clip_value=None):
  generator = Generator(size=SIZE, latent_dim=LATENT, max_channels=8, min_channels=4)
  critic = Critic(size=SIZE, base_channels=4, max_channels=8)
  g_vars = generator.init(jax.random.key(0), jnp.zeros((BATCH, LATENT)))
  d_vars = critic.init(jax.random.key(1), jnp.zeros((BATCH, SIZE, SIZE, 1)), update_stats=True)
  params = {"g": g_vars["params"], "d": d_vars["params"]}
  model_state = {"g": {"batch_stats": g_vars["batch_stats"]},
                 "d": {"batch_stats": d_vars["batch_stats"]}}
  g_tx, d_tx = optax.adam(1e-3, b1=0.5, b2=0.9), optax.rmsprop(5e-3, decay=0.99, eps=1e-8)
  critic_loss, generator_loss = _wgan_gp_losses(generator, critic)
  state = gan.GANState.create(params, model_state, g_tx, d_tx, jax.random.key(7))
  return state, critic_loss, generator_loss, g_tx, d_tx


def _plain_python_reference(state, batches, critic_loss, generator_loss, g_tx, d_tx, n_critic,
                            clip_value):
  """The same updates written out one by one: n_critic critic steps, then one G step."""
  params = dict(state.params)
  model_state = dict(state.model_state)
  opt = dict(state.opt_state)
  rng = state.rng
  steps = batches["image"].shape[0]
  # Each loss's gradient is jitted as a whole: run op by op, the gradient penalty's double
  # backward compiles hundreds of small programs. The updates around them stay plain.
  critic_grad = jax.jit(jax.value_and_grad(
      lambda d, g, ms, batch, rng: critic_loss({"g": g, "d": d}, ms, batch, rng), has_aux=True))
  generator_grad = jax.jit(jax.value_and_grad(
      lambda g, d, ms, batch, rng: generator_loss({"g": g, "d": d}, ms, batch, rng),
      has_aux=True))
  for i in range(steps):
    rng, step_rng = jax.random.split(rng)
    critic_rngs = jax.random.split(jax.random.fold_in(step_rng, 0), n_critic)
    for k in range(n_critic):
      batch = {"image": batches["image"][i, k]}
      (_, (model_state, _)), grads = critic_grad(params["d"], params["g"], model_state, batch,
                                                 critic_rngs[k])
      updates, opt["d"] = d_tx.update(grads, opt["d"], params["d"])
      params["d"] = optax.apply_updates(params["d"], updates)
      if clip_value is not None:
        params["d"] = jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params["d"])
    batch = {"image": batches["image"][i, n_critic - 1]}
    (_, (model_state, _)), grads = generator_grad(params["g"], params["d"], model_state, batch,
                                                  jax.random.fold_in(step_rng, 1))
    updates, opt["g"] = g_tx.update(grads, opt["g"], params["g"])
    params["g"] = optax.apply_updates(params["g"], updates)
  return params, model_state


N_CRITIC, STEPS = 3, 2


def _batches():
  return {"image": jax.random.uniform(jax.random.key(5),
                                      (STEPS, N_CRITIC, BATCH, SIZE, SIZE, 1), minval=-1)}


@pytest.fixture(scope="module")
def one_by_one():
  """The written-out updates for a clip value, made once (the slow part) and read
  by every executor's test of that clip value."""
  made = {}

  def updates(clip_value):
    if clip_value not in made:
      state, critic_loss, generator_loss, g_tx, d_tx = _setup()
      made[clip_value] = _plain_python_reference(state, _batches(), critic_loss, generator_loss,
                                                 g_tx, d_tx, N_CRITIC, clip_value)
    return made[clip_value]

  return updates


@pytest.mark.parametrize("inner_loop,clip_value", [("scan", None), ("host", None),
                                                   ("scan", 0.05)])
def test_chunk_equals_the_updates_made_one_by_one(one_by_one, inner_loop, clip_value):
  state, critic_loss, generator_loss, g_tx, d_tx = _setup()
  batches = _batches()
  ref_params, ref_model_state = one_by_one(clip_value)
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, g_tx, d_tx, n_critic=N_CRITIC,
                              clip_value=clip_value, inner_loop=inner_loop)
  new_state, metrics = chunk(state, batches)
  assert int(new_state.step) == STEPS
  assert metrics["d_loss"].shape == (STEPS,) and metrics["g_loss"].shape == (STEPS,)
  assert metrics["d_gp"].shape == (STEPS,) and bool(metrics["finite"])
  chex_close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3,
                                                       atol=5e-5)  # jit vs eager rounding
  jax.tree.map(chex_close, new_state.params, ref_params)
  jax.tree.map(chex_close, new_state.model_state, ref_model_state)
  if clip_value is not None:
    assert max(float(jnp.max(jnp.abs(p))) for p in jax.tree.leaves(new_state.params["d"])) \
        <= clip_value + 1e-7


def _linear_game():
  """A linear critic f(x) = <w, x> + b and a 'generator' whose fakes are its parameters,
  so every gradient is known in closed form: dL_D/dw = mean(fake) - mean(real),
  dL_D/db = 0, dL_G/dfake_i = -w / B."""
  critic_loss = lambda p, ms, batch, rng: (
      jnp.mean(jax.lax.stop_gradient(p["g"]["x"]) @ p["d"]["w"] + p["d"]["b"])
      - jnp.mean(batch["image"] @ p["d"]["w"] + p["d"]["b"]), (ms, {}))
  generator_loss = lambda p, ms, batch, rng: (-jnp.mean(p["g"]["x"] @ p["d"]["w"] + p["d"]["b"]),
                                              (ms, {}))
  params = {"g": {"x": jnp.array([[0.2, -0.1, 0.4], [0.0, 0.3, -0.2]])},
            "d": {"w": jnp.array([0.0, 0.005, -0.002]), "b": jnp.array(0.02)}}
  return critic_loss, generator_loss, params


@pytest.mark.parametrize("clip_value", [None, 0.01])
def test_training_moves_with_and_without_clipping(clip_value):
  """n_critic SGD steps on the critic, each followed by clipping to [-c, c], then one
  generator step against the clipped critic: the engine's chunk against the same steps
  written out in numpy."""
  critic_loss, generator_loss, params = _linear_game()
  start = jax.tree.map(lambda v: np.array(v, np.float64), params)  # the chunk donates params
  lr_d, lr_g, n_critic = 0.1, 0.5, 2
  sgd_d, sgd_g = optax.sgd(lr_d), optax.sgd(lr_g)
  state = gan.GANState.create(params, {"g": {}, "d": {}}, sgd_g, sgd_d, jax.random.key(0))
  real = np.array([[[[0.9, -0.3, -0.1], [0.7, 0.1, 0.0]],
                    [[-0.2, 0.6, 0.5], [0.4, -0.4, 0.3]]]], np.float32)  # [1, n_critic, B, 3]
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, sgd_g, sgd_d, n_critic=n_critic,
                              clip_value=clip_value, inner_loop="host")
  out, metrics = chunk(state, {"image": jnp.asarray(real)})

  clip = (lambda v: np.clip(v, -clip_value, clip_value)) if clip_value else (lambda v: v)
  fake, w, b = start["g"]["x"], start["d"]["w"], float(start["d"]["b"])
  unclipped = []
  for k in range(n_critic):
    w = w - lr_d * (fake.mean(axis=0) - real[0, k].mean(axis=0))
    unclipped.append(w.copy())
    w, b = clip(w), clip(b)  # b's gradient is 0: only clipping moves it
  fake = fake + lr_g * w / len(fake)  # fake_i -= lr_g * (-w / B)
  np.testing.assert_allclose(np.asarray(out.params["d"]["w"]), w, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(float(out.params["d"]["b"]), b, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out.params["g"]["x"]), fake, rtol=1e-6, atol=1e-9)
  assert metrics["d_loss"].shape == (1,) and bool(metrics["finite"])
  if clip_value is not None:
    got = np.asarray(out.params["d"]["w"])
    assert np.all(np.abs(got) <= clip_value) and abs(float(out.params["d"]["b"])) <= clip_value
    # the clipping is what bit: the last unclipped step leaves [-c, c] in some entries only
    outside = np.abs(unclipped[-1]) > clip_value
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(got[outside],
                                  np.sign(unclipped[-1][outside]) * np.float32(clip_value))


def test_bad_engine_arguments_are_rejected():
  _, critic_loss, generator_loss, g_tx, d_tx = _setup()
  with pytest.raises(ValueError, match="n_critic"):
    gan.build_gan_chunk(critic_loss, generator_loss, g_tx, d_tx, n_critic=0)
  with pytest.raises(ValueError, match="inner_loop"):
    gan.build_gan_chunk(critic_loss, generator_loss, g_tx, d_tx, inner_loop="python")
  with pytest.raises(ValueError, match="exactly the keys \\['d', 'g'\\]"):
    gan.GANState.create({"gen": {}}, {"g": {}, "d": {}}, g_tx, d_tx, jax.random.key(0))


def test_generator_and_critic_shapes():
  generator = Generator(size=32, channels=3, latent_dim=10, max_channels=16, min_channels=8)
  variables = generator.init(jax.random.key(0), jnp.zeros((2, 10)))
  images = generator.apply(variables, jnp.ones((2, 10)), train=False)
  assert images.shape == (2, 32, 32, 3)
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  critic = Critic(size=32, base_channels=4, max_channels=16)
  d_vars = critic.init(jax.random.key(1), images, update_stats=True)
  assert critic.apply(d_vars, images).shape == (2,)
  with pytest.raises(ValueError, match="4 \\* 2\\^k"):
    Generator(size=24).init(jax.random.key(0), jnp.zeros((1, 100)))


@pytest.mark.parametrize("subpixel", [True, False])
def test_transposed_conv_matches_pytorch_formula(subpixel):
  # torch ConvTranspose2d(k=4, s=2, p=1): out[2i - 1 + ky, 2j - 1 + kx] += x[i, j] @ w[ky, kx]
  from medda_jax.models.wgan import ConvTranspose4x4
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  layer = ConvTranspose4x4(6, subpixel=subpixel)
  variables = layer.init(jax.random.key(0), jnp.asarray(x))
  w = np.asarray(variables["params"]["kernel"])
  full = np.zeros((2, 2 * 3 + 2, 2 * 4 + 2, 6), np.float32)  # one extra row/col each side
  for i in range(3):
    for j in range(4):
      for ky in range(4):
        for kx in range(4):
          full[:, 2 * i + ky, 2 * j + kx] += x[:, i, j] @ w[ky, kx]
  expected = full[:, 1:-1, 1:-1]  # drop the padding of 1
  np.testing.assert_allclose(layer.apply(variables, jnp.asarray(x)), expected, rtol=1e-5,
                             atol=1e-5)


def _toy_side_game():
  """Scalar 'networks' so the side-update schedule can be followed by hand: the critic and
  generator fit a mean, the side network fits y = 3x on the step's last batch."""
  critic_loss = lambda p, ms, b, r: (jnp.mean((p["d"]["w"] - b["x"]) ** 2), (ms, {}))
  generator_loss = lambda p, ms, b, r: (jnp.mean((p["g"]["w"] + b["x"]) ** 2), (ms, {}))
  # The side loss reads the generator (frozen there) and its own rng, like CyCADA's F_T.
  side_loss = lambda p, ms, b, r: (
      jnp.mean((p["t"]["w"] * b["x"] + 0.0 * p["g"]["w"] - 3.0 * b["x"]) ** 2)
      + 0.0 * jax.random.uniform(r), (ms, {"seen": jnp.mean(b["x"])}))
  params = {k: {"w": jnp.array(0.5)} for k in ("g", "d", "t")}
  model_state = {k: {} for k in ("g", "d", "t")}
  return critic_loss, generator_loss, side_loss, params, model_state


@pytest.mark.parametrize("inner_loop", ["scan", "host"])
def test_side_updates_follow_the_generator_every_k_steps(inner_loop):
  critic_loss, generator_loss, side_loss, params, model_state = _toy_side_game()
  sgd = optax.sgd(0.1)
  side = gan.SideUpdate("t", side_loss, sgd, every=2)
  state = gan.GANState.create(params, model_state, sgd, sgd, jax.random.key(0),
                              side_txs={"t": sgd})
  steps, n_critic = 5, 2
  batches = {"x": jnp.arange(1.0, 1.0 + steps * n_critic * 3).reshape(steps, n_critic, 3)}
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, sgd, sgd, n_critic=n_critic,
                              inner_loop=inner_loop, side_updates=(side,))
  out, metrics = chunk(state, batches)

  # By hand: plain gradient steps; the side moves at generator steps 0, 2 and 4 only, each
  # time on that step's last critic batch.
  w = {k: 0.5 for k in ("g", "d", "t")}
  for i in range(steps):
    for k in range(n_critic):
      x = np.asarray(batches["x"][i, k])
      w["d"] -= 0.1 * np.mean(2 * (w["d"] - x))
    last = np.asarray(batches["x"][i, n_critic - 1])
    w["g"] -= 0.1 * np.mean(2 * (w["g"] + last))
    if i % 2 == 0:
      w["t"] -= 0.1 * np.mean(2 * (w["t"] * last - 3 * last) * last)
  for k in ("g", "d", "t"):
    np.testing.assert_allclose(float(out.params[k]["w"]), w[k], rtol=1e-5)
  seen = np.asarray(metrics["t_seen"])
  last_means = np.asarray(batches["x"][:, n_critic - 1]).mean(axis=1)
  np.testing.assert_allclose(seen, np.where(np.arange(steps) % 2 == 0, last_means, 0.0))
  assert int(out.step) == steps and bool(metrics["finite"])


def test_side_update_errors_are_clear():
  critic_loss, generator_loss, side_loss, params, model_state = _toy_side_game()
  sgd = optax.sgd(0.1)
  with pytest.raises(ValueError, match="exactly the keys"):
    gan.GANState.create(params, model_state, sgd, sgd, jax.random.key(0))  # no tx for "t"
  with pytest.raises(ValueError, match="own key"):
    gan.build_gan_step(critic_loss, generator_loss, sgd, sgd,
                       side_updates=(gan.SideUpdate("g", side_loss, sgd),))
  with pytest.raises(ValueError, match="every >= 1"):
    gan.build_gan_step(critic_loss, generator_loss, sgd, sgd,
                       side_updates=(gan.SideUpdate("t", side_loss, sgd, every=0),))
