"""StarGAN networks, the StarGAN + CyCADA losses against written-out formulas, the learning
rate schedule, label-balanced batches and a short training run whose losses move."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medda_jax import losses, parallel
from medda_jax.config_utils import load_config
from medda_jax.data import digits
from medda_jax.data.images import ImageSet
from medda_jax.methods import stargan_da as sd
from medda_jax.models.stargan import LeNet, StarDiscriminator, StarGenerator, critic_layers

SMOKE = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "stargan.py") + ":smoke"


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_match_the_reference_stargan():
  # yunjey/stargan's print_network for CelebA (5 domains, 128 px, 6 residual blocks):
  # G 8,430,528 and D 44,762,048 parameters.
  x = jnp.zeros((1, 128, 128, 3))
  g = jax.eval_shape(lambda: StarGenerator(n_domains=5, res_blocks=6).init(
      jax.random.key(0), x, jnp.zeros((1,), jnp.int32)))
  d = jax.eval_shape(lambda: StarDiscriminator(size=128, n_domains=5, layers=6).init(
      jax.random.key(0), x))
  assert _count(g["params"]) == 8_430_528
  assert _count(d["params"]) == 44_762_048


@pytest.mark.parametrize("size,layers,patch", [(32, 5, 1), (128, 6, 2), (224, 6, 3)])
def test_shapes_at_the_papers_sizes(size, layers, patch):
  assert critic_layers(size) == layers
  x = jnp.zeros((2, size, size, 3))
  gen = StarGenerator(n_domains=2, base_channels=8, res_blocks=1)
  dom = jnp.array([0, 1])
  g_vars = jax.eval_shape(lambda: gen.init(jax.random.key(0), x, dom))
  assert jax.eval_shape(lambda v: gen.apply(v, x, dom), g_vars).shape == x.shape
  critic = StarDiscriminator(size=size, n_domains=2, base_channels=8, layers=layers)
  d_vars = jax.eval_shape(lambda: critic.init(jax.random.key(0), x))
  src, cls = jax.eval_shape(lambda v: critic.apply(v, x), d_vars)
  assert src.shape == (2, patch, patch) and cls.shape == (2, 2)


def test_lenet_matches_cycadas_layout():
  net = LeNet(num_classes=10)
  x = jnp.ones((4, 32, 32, 3))
  variables = net.init(jax.random.key(0), x)
  # conv 3->20 (5x5), conv 20->50 (5x5), dense 1250->500, dense 500->10, with biases.
  assert _count(variables) == (75 * 20 + 20) + (500 * 50 + 50) + (1250 * 500 + 500) + 5010
  eval_out = net.apply(variables, x)
  assert eval_out.shape == (4, 10)
  np.testing.assert_array_equal(eval_out, net.apply(variables, x))  # no dropout in eval
  train_out = net.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(train_out, eval_out)


def test_networks_treat_every_image_on_its_own():
  # Instance norm (no batch statistics) and a normalisation-free critic: an image's output
  # does not depend on the rest of the batch (the gradient penalty relies on it).
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  dom = jnp.array([1, 0, 1])
  gen = StarGenerator(n_domains=2, base_channels=4, res_blocks=1)
  critic = StarDiscriminator(size=16, n_domains=2, base_channels=4, layers=4)
  g_vars = gen.init(jax.random.key(0), x, dom)
  d_vars = critic.init(jax.random.key(1), x)
  together = gen.apply(g_vars, x, dom)
  alone = jnp.concatenate([gen.apply(g_vars, x[i:i + 1], dom[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  src, cls = critic.apply(d_vars, x)
  src1, cls1 = critic.apply(d_vars, x[1:2])
  np.testing.assert_allclose(src[1:2], src1, atol=1e-5)
  np.testing.assert_allclose(cls[1:2], cls1, atol=1e-5)
  # The target domain is an input: changing it changes the translation.
  assert not np.allclose(gen.apply(g_vars, x, 1 - dom), together, atol=1e-4)


def _tiny_setup(seed=0):
  size, half = 16, 3
  c = load_config(SMOKE)
  gen = StarGenerator(n_domains=2, base_channels=4, res_blocks=1)
  critic = StarDiscriminator(size=size, n_domains=2, base_channels=4, layers=4)
  net = LeNet(num_classes=10)
  rng = np.random.default_rng(seed)
  batch = {"x_s": jnp.asarray(rng.uniform(-1, 1, (half, size, size, 3)), jnp.float32),
           "y_s": jnp.asarray(rng.integers(0, 10, half), jnp.int32),
           "x_t": jnp.asarray(rng.uniform(-1, 1, (half, size, size, 3)), jnp.float32)}
  x = batch["x_s"]
  fs = net.init(jax.random.key(3), x)["params"]
  ft = net.init(jax.random.key(4), x)["params"]
  params = {"g": gen.init(jax.random.key(1), x, jnp.zeros((half,), jnp.int32))["params"],
            "d": critic.init(jax.random.key(2), x)["params"], "fs": fs, "ft": ft}
  model_state = {k: {} for k in params}
  return c, gen, critic, net, params, model_state, batch


def _ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), np.asarray(labels)])


def test_critic_loss_is_written_out_stargans():
  c, gen, critic, net, params, model_state, batch = _tiny_setup()
  critic_loss, *_ = sd.stargan_losses(gen, critic, net, c.stargan)
  rng = jax.random.key(9)
  loss, (_, m) = critic_loss(params, model_state, batch, rng)
  G = lambda x, d: gen.apply({"params": params["g"]}, x, jnp.asarray(d))
  D = lambda x: critic.apply({"params": params["d"]}, x)
  x = jnp.concatenate([batch["x_s"], batch["x_t"]])
  org = np.array([0, 0, 0, 1, 1, 1])
  fake = G(x, 1 - org)
  adv = float(jnp.mean(D(fake)[0]) - jnp.mean(D(x)[0]))
  # Gradient penalty sample by sample, the norm over all pixels and channels of the
  # gradient of the summed patch scores.
  x_hat = np.asarray(losses.interpolate(x, fake, rng))  # the draw the loss makes with rng
  norms = [np.linalg.norm(np.asarray(jax.grad(lambda im: D(im[None])[0].sum())(
      jnp.asarray(x_hat[i])))) for i in range(6)]
  gp = np.mean((np.array(norms) - 1.0) ** 2)
  cls = _ce(D(x)[1], org)
  np.testing.assert_allclose(float(m["gp"]), gp, rtol=1e-4)
  np.testing.assert_allclose(float(m["cls"]), cls, rtol=1e-5)
  np.testing.assert_allclose(float(loss), adv + 10 * gp + cls, rtol=1e-4)


def test_generator_loss_is_adversarial_class_cycle_and_semantic():
  c, gen, critic, net, params, model_state, batch = _tiny_setup()
  _, generator_loss, ft_loss, fs_loss = sd.stargan_losses(gen, critic, net, c.stargan)
  loss, (_, m) = generator_loss(params, model_state, batch, jax.random.key(0))
  G = lambda x, d: gen.apply({"params": params["g"]}, x, jnp.full((x.shape[0],), d))
  D = lambda x: critic.apply({"params": params["d"]}, x)
  F = lambda side, x: net.apply({"params": params[side]}, x)
  xs, xt, ys = batch["x_s"], batch["x_t"], np.asarray(batch["y_s"])
  fake_s, fake_t = G(xs, 1), G(xt, 0)
  fakes = jnp.concatenate([fake_s, fake_t])
  adv = -float(jnp.mean(D(fakes)[0]))
  cls = _ce(D(fakes)[1], [1, 1, 1, 0, 0, 0])
  rec = float(np.mean(np.abs(np.concatenate([xs - G(fake_s, 0), xt - G(fake_t, 1)]))))
  pseudo = np.argmax(np.asarray(F("ft", xt)), -1)
  sem = (_ce(F("fs", G(fake_s, 0)), ys) + _ce(F("ft", fake_s), ys)
         + _ce(F("fs", fake_t), pseudo))
  np.testing.assert_allclose([m["adv"], m["cls"], m["rec"], m["sem"]], [adv, cls, rec, sem],
                             rtol=1e-4)
  np.testing.assert_allclose(float(loss), adv + cls + 10 * rec + sem, rtol=1e-4)
  # The task losses: F_T on translated source, F_S on real source (dropout on).
  ft, _ = ft_loss(params, model_state, batch, jax.random.key(1))
  expect = _ce(net.apply({"params": params["ft"]}, fake_s, train=True,
                         rngs={"dropout": jax.random.key(1)}), ys)
  np.testing.assert_allclose(float(ft), expect, rtol=1e-4)
  fs, _ = fs_loss(params, model_state, batch, jax.random.key(2))
  expect = _ce(net.apply({"params": params["fs"]}, xs, train=True,
                         rngs={"dropout": jax.random.key(2)}), ys)
  np.testing.assert_allclose(float(fs), expect, rtol=1e-4)


def test_generator_loss_leaves_the_task_networks_frozen():
  c, gen, critic, net, params, model_state, batch = _tiny_setup()
  _, generator_loss, _, _ = sd.stargan_losses(gen, critic, net, c.stargan)
  loss = jax.jit(lambda p, rng: generator_loss(p, model_state, batch, rng)[0])
  grads = jax.jit(jax.grad(loss))(params, jax.random.key(0))
  assert _count(grads["g"]) and float(optax.tree.norm(grads["g"])) > 0
  # The engine differentiates only params["g"]; this checks the loss needs nothing else:
  # the task networks run in eval mode (no dropout rng is consumed).
  assert float(optax.tree.norm(grads["fs"])) > 0  # they do shape the loss ...
  out1, out2 = loss(params, jax.random.key(0)), loss(params, jax.random.key(5))
  assert float(out1) == float(out2)  # ... deterministically


def test_learning_rate_is_constant_then_linear_to_zero():
  sched = sd.lr_schedule(1e-4, decay_from=100, total=200, iters_per_update=1)
  np.testing.assert_allclose([sched(0), sched(99), sched(100), sched(150), sched(200),
                              sched(300)], [1e-4, 1e-4, 1e-4, 5e-5, 0.0, 0.0], atol=1e-12)
  g_sched = sd.lr_schedule(1e-4, decay_from=100, total=200, iters_per_update=5)
  np.testing.assert_allclose(g_sched(30), sched(150), rtol=1e-6)  # G step 30 = D iter 150


def test_balanced_batches_hold_every_class_equally():
  labels = np.array([0] * 95 + [1] * 5)
  idx = sd.balanced_indices(labels, steps=20, batch_size=10, seed=0)
  assert idx.shape == (20, 10)
  assert (labels[idx].sum(axis=1) == 5).all()
  three = np.repeat([0, 1, 2], [50, 30, 20])
  counts = np.stack([np.bincount(three[row], minlength=3) for row in
                     sd.balanced_indices(three, 5, 8, 1)])
  assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_a_short_stargan_run_learns_domains_and_cycles():
  # Real digits: MNIST (grey) against MNIST-M (colour photos behind the strokes), 16 px.
  c = load_config(SMOKE)
  c.stargan.batch_size, c.stargan.n_critic, c.stargan.steps_per_call = 16, 2, 1
  c.stargan.g_base_channels, c.stargan.d_base_channels = 8, 8
  c.stargan.d_iters, c.stargan.decay_from = 2 * 60, 2 * 60
  c.stargan.learning_rate = 5e-4
  domains = {}
  for name in ("mnist", "mnist_m"):
    dom = digits.load_digit_domain(name, size=16, channels=3)
    idx = np.arange(300)
    domains[name] = ImageSet(sd.experiment._normalise(dom.images[idx]), dom.labels[idx])
  net = LeNet(num_classes=10)
  classifier = jax.device_get(net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  mesh = parallel.data_mesh()
  pair = sd.PairGAN(c, net, mesh, None, "host", jnp.float32, task_every=1)
  state = pair.init_state(0, classifier)
  ds = sd.pair_batches(domains["mnist"], domains["mnist_m"], 60, c, 0)
  from medda_jax.engine import gan
  history = []
  for k in range(60):
    state, m = pair.chunk(state, gan.shard_batches(ds[k], mesh))
    history.append({key: float(np.mean(v)) for key, v in m.items()})
  first = {k: np.mean([h[k] for h in history[:10]]) for k in history[0]}
  last = {k: np.mean([h[k] for h in history[-10:]]) for k in history[0]}
  assert last["g_rec"] < 0.85 * first["g_rec"], (first, last)  # the cycle closes
  assert last["d_cls"] < 0.75 * first["d_cls"], (first, last)  # the critic tells domains apart
  assert last["ft_loss"] < first["ft_loss"], (first, last)  # F_T learns translated digits
  assert all(h["finite"] for h in history)
