"""CycleGAN on the GAN engine: the image pool against the reference's ImagePool, the losses
written out, the learning-rate policy, the generator-first step and K scanned iterations
against K single ones."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medda_jax.engine import gan, image_pool
from medda_jax.methods.cyclegan_uda import paper
from medda_jax.models.cyclegan import NLayerDiscriminator, ResnetGenerator

SIZE, BATCH, POOL = 8, 2, 3
WEIGHTS = ml_collections.ConfigDict({"lambda_a": 10.0, "lambda_b": 7.0, "lambda_identity": 0.5})


class ReferenceImagePool:
  """The reference's util/image_pool.py ImagePool, transcribed; its two random draws per
  image (`random.uniform`, `random.randint`) come from the lists given instead."""

  def __init__(self, pool_size):
    self.pool_size, self.num_imgs, self.images = pool_size, 0, []

  def query(self, images, coins, slots):
    if self.pool_size == 0:
      return images
    return_images = []
    for image, p, random_id in zip(images, coins, slots):
      if self.num_imgs < self.pool_size:
        self.num_imgs = self.num_imgs + 1
        self.images.append(image)
        return_images.append(image)
      else:
        if p > 0.5:
          tmp = self.images[random_id].copy()
          self.images[random_id] = image
          return_images.append(tmp)
        else:
          return_images.append(image)
    return np.stack(return_images)


def test_pool_matches_the_reference_image_pool():
  rng = np.random.default_rng(0)
  pool = image_pool.ImagePool.create(POOL, (2, 2, 1))
  reference = ReferenceImagePool(POOL)
  query = jax.jit(image_pool.query)
  swapped = 0
  for step in range(8):
    images = rng.normal(size=(BATCH, 2, 2, 1)).astype(np.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(42), step)
    coins, slots = map(np.asarray, image_pool.image_draws(key, BATCH, POOL))
    pool, out = query(pool, jnp.asarray(images), key)
    want = reference.query(list(images), coins, slots)
    np.testing.assert_array_equal(np.asarray(out), want)
    assert int(pool.count) == reference.num_imgs
    np.testing.assert_array_equal(np.asarray(pool.images)[:reference.num_imgs],
                                  np.stack(reference.images))
    swapped += int(sum(not np.array_equal(o, i) for o, i in zip(want, images)))
  assert swapped > 0  # the fixed key exercises the swap branch, not only the fill


def test_pool_of_size_zero_returns_the_batch():
  pool = image_pool.ImagePool.create(0, (2, 2, 1))
  x = jnp.arange(8.0).reshape(2, 2, 2, 1)
  _, out = image_pool.query(pool, x, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out, x)


def test_learning_rate_is_constant_then_linear_to_zero():
  schedule = paper.lr_schedule(2e-4, n_epochs=3, n_epochs_decay=4, steps_per_epoch=5)
  for count in range(7 * 5):
    epoch = count // 5
    want = 2e-4 * (1.0 - max(0, epoch + 1 - 3) / 5.0)  # the reference's lambda_rule
    assert float(schedule(count)) == pytest.approx(want, rel=1e-6), count
  assert float(schedule(34)) == pytest.approx(2e-4 / 5)


def _networks(blocks=1):
  generator = ResnetGenerator(channels=1, features=4, n_blocks=blocks)
  critic = NLayerDiscriminator(features=4, n_layers=1)
  return generator, critic


def _state(generator, critic, tx, seed=0):
  x = jnp.zeros((1, SIZE, SIZE, 1))
  k = jax.random.PRNGKey(seed)
  params = {"g": {w: jax.jit(generator.init)(jax.random.fold_in(k, i), x)["params"]
                  for i, w in enumerate("ab")},
            "d": {w: jax.jit(critic.init)(jax.random.fold_in(k, 2 + i), x)["params"]
                  for i, w in enumerate("ab")}}
  model_state = {"g": {}, "d": paper.initial_critic_state(BATCH, (SIZE, SIZE, 1), POOL)}
  return gan.GANState.create(params, model_state, tx, tx, jax.random.PRNGKey(seed + 1))


def _batch(seed, steps=None):
  rng = np.random.default_rng(seed)
  shape = ((steps, 1) if steps else ()) + (BATCH, SIZE, SIZE, 1)
  return {w: jnp.asarray(np.tanh(rng.normal(size=shape)), jnp.float32) for w in "ab"}


def test_generator_loss_is_written_out_cyclegans():
  generator, critic = _networks()
  state = _state(generator, critic, optax.adam(1e-3))
  _, generator_loss = paper.cyclegan_losses(generator, critic, WEIGHTS)
  batch = _batch(1)
  loss, (model_state, terms) = jax.jit(generator_loss)(state.params, state.model_state, batch, None)
  G = lambda w, x: np.asarray(jax.jit(generator.apply)({"params": state.params["g"][w]}, x))
  D = lambda w, x: np.asarray(jax.jit(critic.apply)({"params": state.params["d"][w]}, x))
  a, b = np.asarray(batch["a"]), np.asarray(batch["b"])
  fake_b, fake_a = G("a", a), G("b", b)
  want = {"gan_a": np.mean((D("a", fake_b) - 1) ** 2), "gan_b": np.mean((D("b", fake_a) - 1) ** 2),
          "cycle_a": 10.0 * np.mean(np.abs(G("b", fake_b) - a)),
          "cycle_b": 7.0 * np.mean(np.abs(G("a", fake_a) - b)),
          "idt_a": 0.5 * 7.0 * np.mean(np.abs(G("a", b) - b)),
          "idt_b": 0.5 * 10.0 * np.mean(np.abs(G("b", a) - a))}
  for k, v in want.items():
    assert float(terms[k]) == pytest.approx(float(v), rel=1e-5, abs=1e-6), k
  assert float(loss) == pytest.approx(sum(float(v) for v in want.values()), rel=1e-5)
  # The fakes are handed on to the critic side, the pools untouched.
  np.testing.assert_allclose(model_state["d"]["fake_b"], fake_b, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model_state["d"]["fake_a"], fake_a, rtol=1e-6, atol=1e-6)
  assert int(model_state["d"]["pool_a"].count) == 0


def test_critic_loss_is_halved_lsgan_on_the_pooled_fakes():
  generator, critic = _networks()
  state = _state(generator, critic, optax.adam(1e-3))
  critic_loss, _ = paper.cyclegan_losses(generator, critic, WEIGHTS)
  batch, fakes = _batch(2), _batch(3)
  model_state = {**state.model_state, "d": {**state.model_state["d"],
                                            "fake_a": fakes["a"], "fake_b": fakes["b"]}}
  loss, (new_state, terms) = jax.jit(critic_loss)(state.params, model_state, batch,
                                         jax.random.PRNGKey(5))
  D = lambda w, x: np.asarray(jax.jit(critic.apply)({"params": state.params["d"][w]}, x))
  # An empty pool (size 3 >= batch 2) returns the fakes themselves and stores them.
  d_a = 0.5 * (np.mean((D("a", batch["b"]) - 1) ** 2) + np.mean(D("a", fakes["b"]) ** 2))
  d_b = 0.5 * (np.mean((D("b", batch["a"]) - 1) ** 2) + np.mean(D("b", fakes["a"]) ** 2))
  assert float(terms["d_a"]) == pytest.approx(float(d_a), rel=1e-5)
  assert float(loss) == pytest.approx(float(d_a + d_b), rel=1e-5)
  pool_b = new_state["d"]["pool_b"]
  assert int(pool_b.count) == BATCH
  np.testing.assert_array_equal(pool_b.images[:BATCH], fakes["b"])


def test_critics_judge_the_fakes_of_the_generators_before_their_update():
  generator, critic = _networks()
  tx = optax.adam(1e-2)
  state = _state(generator, critic, tx)
  critic_loss, generator_loss = paper.cyclegan_losses(generator, critic, WEIGHTS)
  step = jax.jit(gan.build_gan_step(critic_loss, generator_loss, tx, tx, n_critic=1,
                                    inner_loop="host", generator_first=True))
  batch = _batch(4, steps=1)
  before = jax.tree.map(np.asarray, state.params)
  new, metrics = step(state, {w: v[0] for w, v in batch.items()})
  fake_b = jax.jit(generator.apply)({"params": before["g"]["a"]}, batch["a"][0, 0])
  np.testing.assert_allclose(new.model_state["d"]["pool_b"].images[:BATCH], fake_b,
                             rtol=1e-5, atol=1e-6)
  for side in ("g", "d"):  # both sides moved in the one step
    assert not np.allclose(jax.tree.leaves(new.params[side])[0],
                           jax.tree.leaves(before[side])[0])
  assert {"g_gan_a", "g_cycle_b", "g_idt_a", "d_d_a", "d_d_b"} <= set(metrics)


def test_k_iterations_in_one_call_equal_k_single_iterations():
  """K iterations in one call, scanned and unrolled, against K calls of one iteration: the
  same updates, handed-on pools and RNG."""
  K = 2
  generator, critic = _networks()
  # Plain SGD: Adam would turn the rounding noise in the (mathematically zero) gradients of
  # the conv biases before an instance norm into full steps, a different noise per program.
  tx = optax.sgd(paper.lr_schedule(0.1, 1, 1, steps_per_epoch=1), momentum=0.5)
  critic_loss, generator_loss = paper.cyclegan_losses(generator, critic, WEIGHTS)
  build = lambda inner_loop: gan.build_gan_chunk(critic_loss, generator_loss, tx, tx,
                                                 n_critic=1, inner_loop=inner_loop,
                                                 generator_first=True)
  batches = _batch(6, steps=K)
  one = build("host")
  state = _state(generator, critic, tx)
  singles = []
  for k in range(K):
    state, m = one(state, jax.tree.map(lambda x: x[k:k + 1], batches))
    singles.append(m)
  chex_close = lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=2e-5, atol=2e-6)
  for inner_loop in ("scan", "host"):
    many, m_many = build(inner_loop)(_state(generator, critic, tx), batches)
    jax.tree.map(chex_close, many.params, state.params)
    jax.tree.map(chex_close, many.model_state, state.model_state)  # pools included
    np.testing.assert_array_equal(many.rng, state.rng)
    assert int(many.step) == int(state.step) == K
    for k in range(K):
      chex_close(m_many["g_loss"][k], singles[k]["g_loss"][0])
      chex_close(m_many["d_loss"][k], singles[k]["d_loss"][0])
    assert bool(m_many["finite"]), inner_loop


def _smoke_config():
  from medda_jax.config_utils import load_config
  return load_config("configs/cyclegan.py:smoke")


def test_a_user_domain_is_split_by_patient_with_the_positive_class_as_1(tmp_path):
  from PIL import Image
  from medda_jax.methods import cyclegan_uda
  rng = np.random.default_rng(0)
  rows = ["path,label,patient_id"]
  for p in range(40):
    for view in range(2):
      name = f"p{p}_{view}.png"
      Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8)).save(tmp_path / name)
      rows.append(f"{name},{'malignant' if p % 2 else 'benign'},P{p}")
  (tmp_path / "site.csv").write_text("\n".join(rows) + "\n")
  c = _smoke_config()
  c.data.val_fraction = 0.3
  domain = cyclegan_uda.load_domain(c, f"ours={tmp_path / 'site.csv'}")
  assert domain.name == "ours" and domain.classes == ("benign", "malignant")
  size, load = c.cyclegan.crop_size, c.cyclegan.load_size
  assert domain.train.images[:2].shape == (2, size, size, 1)
  assert len(domain.gan_images) == len(domain.train) + len(domain.val)
  assert domain.gan_images[:1].shape == (1, load, load, 1)
  patients = [{int(p.split("_")[0][1:]) for p in np.asarray(
      [pathlib_name(s, i) for i in range(len(s))])} for s in (domain.train, domain.val,
                                                               domain.test)]
  assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
  for s in (domain.train, domain.val, domain.test):  # malignant (odd patients) is label 1
    names = [pathlib_name(s, i) for i in range(len(s))]
    assert [int(n.split("_")[0][1:]) % 2 for n in names] == s.labels.tolist()
    x = s.images[:len(s)]
    assert x.min() >= -1.0 and x.max() <= 1.0


def pathlib_name(image_set, i):
  """The file name behind image i of a lazily decoded set."""
  images = image_set.images
  return images.source.table.paths[int(images.indices[i])].rsplit("/", 1)[-1]


def test_cyclegan_batches_are_a_function_of_seed_and_index():
  from medda_jax.methods import cyclegan_uda
  c = _smoke_config()
  a = cyclegan_uda.load_domain(c, "mnist")
  b = cyclegan_uda.load_domain(c, "optdigits")
  ds = cyclegan_uda.gan_batches(c, a, b, calls=6, seed=3)
  g = c.cyclegan
  first = ds[4]
  assert first["a"].shape == (g.steps_per_call, 1, g.batch_size, g.crop_size, g.crop_size, 1)
  np.testing.assert_array_equal(first["a"], cyclegan_uda.gan_batches(c, a, b, 6, 3)[4]["a"])
  assert not np.array_equal(first["b"], cyclegan_uda.gan_batches(c, a, b, 6, 4)[4]["b"])
  # One epoch visits every A image once (before cropping): the epoch's order is a
  # permutation of max(|A|, |B|) slots taken modulo |A|.
  spe = cyclegan_uda.steps_per_epoch(c, a, b)
  assert spe == -(-max(len(a.gan_images), len(b.gan_images)) // g.batch_size)
