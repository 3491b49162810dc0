"""SIFA and SynthMix on the GAN engine: the segmentation losses against numpy, SIFA's
batch-level pool against its TensorFlow-era Python pool, the SynthMix masks and Inspector
loss written out, every sub-step's loss against a plain composition of the networks, the
reference's order of the eight sub-steps replayed by hand, and K scanned iterations
against K single ones."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medda_jax import losses, parallel
from medda_jax.engine import gan, image_pool
from medda_jax.methods.sifa import paper


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_weighted_cross_entropy_and_dice_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 3, 4))  # class 4 absent: weight 1, no pixels
  y = np.eye(5)[labels]
  p = _softmax(logits.astype(np.float64))
  ce_want = 0.0
  for c in range(5):
    w = 1 - y[..., c].sum() / y.sum()
    ce_want += -w * y[..., c] * np.log(np.clip(p[..., c], 0.005, 1))
  ce_want = ce_want.mean()
  dice = sum(2 * (p[..., c] * y[..., c]).sum()
             / ((p[..., c] ** 2).sum() + y[..., c].sum() + 1e-7) for c in range(5))
  ce, dice_loss = paper.task_loss(jnp.asarray(logits), jnp.asarray(labels), 5)
  np.testing.assert_allclose(float(ce), ce_want, rtol=1e-5)
  np.testing.assert_allclose(float(dice_loss), 1 - dice / 5, rtol=1e-5)
  # The clip bounds a confidently wrong pixel's loss at -log(0.005), times its class weight
  # (1 - the class's share of the batch's pixels: 1/2 here).
  wrong = jnp.asarray(np.eye(5)[[0, 0]] * 50.0, jnp.float32)[None, None]  # [1, 1, 2, 5]
  y = jnp.asarray(np.eye(5)[[2, 1]], jnp.float32)[None, None]
  np.testing.assert_allclose(float(losses.class_weighted_cross_entropy(wrong, y)),
                             0.5 * -np.log(0.005), rtol=1e-6)


class TFBatchPool:
  """SIFA's main.py fake_image_pool (a pool of whole batches, num_fakes counted per
  iteration), its random.random / random.randint draws given instead."""

  def __init__(self, size):
    self.size, self.items, self.num_fakes = size, [None] * size, 0

  def query(self, fake, p, random_id):
    out = None
    if self.num_fakes < self.size:
      self.items[self.num_fakes] = fake
      out = fake
    elif p > 0.5:
      out, self.items[random_id] = self.items[random_id], fake
    else:
      out = fake
    self.num_fakes += 1
    return out


def test_batch_pool_matches_sifas_pool():
  rng = np.random.default_rng(1)
  size, shape = 3, (2, 2, 2, 1)
  pool = image_pool.ImagePool.create(size, shape)
  ref = TFBatchPool(size)
  query = jax.jit(image_pool.query_batch)
  swaps = 0
  for step in range(10):
    batch = rng.normal(size=shape).astype(np.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(3), step)
    coin, slot = map(np.asarray, image_pool.image_draws(key, 1, size))
    pool, out = query(pool, jnp.asarray(batch), key)
    want = ref.query(batch, coin[0], slot[0])
    np.testing.assert_array_equal(np.asarray(out), want)
    swaps += step >= size and coin[0] > 0.5
  assert swaps >= 2  # the swap branch was exercised
  with pytest.raises(ValueError, match="batches of shape"):
    image_pool.query_batch(pool, jnp.zeros((3, 2, 2, 1)), jax.random.PRNGKey(0))


def test_synthmix_masks_and_mixes():
  m = paper.draw_masks(jax.random.PRNGKey(0), 64, 4, 0.3)
  assert m.shape == (64, 4, 4) and set(np.unique(np.asarray(m))) <= {0.0, 1.0}
  assert abs(float(m.mean()) - 0.3) < 0.05
  up = np.asarray(paper.upsample_masks(m[:2], (8, 12)))
  assert up.shape == (2, 8, 12, 1)
  for b in range(2):
    for y in range(8):
      for x in range(12):
        assert up[b, y, x, 0] == m[b, y // 2, x // 3]
  a, z = jnp.full((2, 8, 12, 1), 5.0), jnp.full((2, 8, 12, 1), -1.0)
  mixed = np.asarray(paper.mix(jnp.asarray(up), a, z))
  np.testing.assert_array_equal(mixed, np.where(up == 1, 5.0, -1.0))


class FakeInspector(nn.Module):
  """A stand-in Inspector: cell logits = mean pooling of the image times w, global = mean."""
  k: int = 2

  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.constant(1.5), ())
    b, h, wd, _ = x.shape
    cells = x[..., 0].reshape(b, self.k, h // self.k, self.k, wd // self.k).mean((2, 4)) * w
    return cells, x.mean((1, 2, 3)) * w


def _bce(logit, target):
  return np.mean(np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit))))


def test_inspector_losses_written_out():
  rng = np.random.default_rng(2)
  x_s, x_t = (rng.normal(size=(3, 4, 4, 1)).astype(np.float32) for _ in range(2))
  m = (rng.random((3, 2, 2)) < 0.5).astype(np.float32)
  inspector = FakeInspector()
  params = inspector.init(jax.random.PRNGKey(0), jnp.asarray(x_s))["params"]

  def heads(x):
    cells = 1.5 * x[..., 0].reshape(3, 2, 2, 2, 2).mean((2, 4))
    return cells, 1.5 * x.mean((1, 2, 3))

  def bce_pair(x, target):
    cells, glob = heads(x)
    return _bce(cells, target) + _bce(glob, target.mean((1, 2)))

  up = np.repeat(np.repeat(m, 2, 1), 2, 2)[..., None]
  x_unal = up * x_t + (1 - up) * x_s
  want = (bce_pair(x_s, np.zeros_like(m)) + bce_pair(x_t, np.ones_like(m))
          + bce_pair(x_unal, m))
  got = paper.inspector_loss(inspector, params, jnp.asarray(x_s), jnp.asarray(x_t),
                             jnp.asarray(m))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# --------------------------------------------------------------------------- whole iteration
SIZE, BATCH, K = 32, 2, 4
# A side's update from the engine against the hand replay, relative L2: float32 rounding
# through BatchNorm / instance norm on 4 x 4 maps gave up to 0.03; the replay with the
# segmentation sub-step moved ahead of G's gave 1.4 (G's update).
TOL_ORDER = 0.1


@pytest.fixture(scope="module")
def tiny():
  """SIFA + SynthMix at the smallest shapes (16 px, widths 2-4, one block each), without
  the decoder's dropout so that a written-out forward pass can match it."""
  from medda_jax.config_utils import load_config
  from medda_jax.methods.sifa.experiment import Sifa
  c = load_config("configs/synthmix.py:smoke")
  c.data.image_size, c.sifa.batch_size, c.synthmix.mask_k = SIZE, BATCH, K
  c.sifa.decoder_dropout, c.sifa.steps_per_call, c.sifa.pool_size = 0.0, 1, 2
  model = Sifa(c, "synthmix", None, "host", jnp.float32)
  rng = np.random.default_rng(0)
  batch = {"source": rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)).astype(np.float32),
           "label": rng.integers(0, 5, (BATCH, SIZE, SIZE)).astype(np.int32),
           "target": rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)).astype(np.float32)}
  return c, model, model.init_state(0), batch


def _sgd_chunk(model, losses_and_sides, inner_loop):
  """The engine's chunk of the tiny model with plain SGD on every side: an update is then
  proportional to its gradient, which Adam's first step (about lr * sign(g)) would hide
  where a gradient is rounding noise. The rate lives in the optimiser state, so one
  compiled chunk serves every rate."""
  critic_loss, generator_loss, sides = losses_and_sides
  txs = {side: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
         for side in ["g", "d", *sides]}
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, txs["g"], txs["d"], n_critic=1,
                              inner_loop=inner_loop, generator_first=True, jit=True,
                              side_updates=tuple(gan.SideUpdate(k, f, txs[k])
                                                 for k, f in sides.items()))
  return txs, chunk


@pytest.fixture(scope="module")
def sgd_host(tiny):
  """(losses, txs, one-iteration host chunk, a fresh SGD state maker), shared by the order
  test and the K-iterations test (one compilation)."""
  c, model, state, _ = tiny
  s = ml_collections.ConfigDict({**c.sifa.to_dict(), **c.synthmix.to_dict(), "synthmix": True})
  losses_and_sides = paper.sifa_losses(model.nets, s)
  txs, chunk = _sgd_chunk(model, losses_and_sides, "host")
  sides = losses_and_sides[2]
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # a chunk donates its state

  def fresh_state(learning_rate=0.1):
    fresh = gan.GANState.create(copy(state.params), copy(state.model_state), txs["g"],
                                txs["d"], copy(state.rng), side_txs={k: txs[k] for k in sides})
    rate = lambda: {"learning_rate": jnp.asarray(learning_rate, jnp.float32)}  # one per side
    fresh = fresh.replace(opt_state={k: v._replace(hyperparams=rate())
                                     for k, v in fresh.opt_state.items()})
    # Placed as the chunk's outputs are, so that a chunk fed its own output state is the
    # same compiled call (a fresh optimiser state's leaves are uncommitted otherwise).
    return parallel.replicate(fresh, model.mesh)

  return losses_and_sides, txs, chunk, fresh_state


def _update(new, old):
  """A side's whole update as one float64 vector."""
  return np.concatenate([np.ravel(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                         for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))])


def _plain_forward(model, params, stats, batch):
  """The SIFA forward pass composed by hand from the networks' applies."""
  n = model.nets
  enc = lambda x, st: n.encoder.apply({"params": params["seg"]["e"], "batch_stats": st}, x,
                                      train=True, mutable=["batch_stats"])
  dec = lambda f, x: n.decoder.apply({"params": params["u"]}, f, x, deterministic=True)
  gen = lambda x: n.generator.apply({"params": params["g"]}, x)
  x_s, x_t = batch["source"], batch["target"]
  fake_t = gen(x_s)
  (f_t, f_t_ll), st = enc(x_t, stats)
  fake_s = dec(f_t, x_t)
  (f_ft, f_ft_ll), st = enc(fake_t, st["batch_stats"])
  cyc_s, cyc_t = dec(f_ft, fake_t), gen(fake_s)
  return dict(fake_t=fake_t, fake_s=fake_s, cyc_s=cyc_s, cyc_t=cyc_t, f_t=f_t, f_t_ll=f_t_ll,
              f_ft=f_ft, f_ft_ll=f_ft_ll), st["batch_stats"]


def _ls(x, target):
  return float(np.mean((np.asarray(x, np.float64) - target) ** 2))


def test_every_loss_term_against_the_written_out_objectives(tiny):
  c, model, state, batch = tiny
  s = ml_collections.ConfigDict({**c.sifa.to_dict(), **c.synthmix.to_dict(), "synthmix": True})
  critic_loss, generator_loss, sides = paper.sifa_losses(model.nets, s)
  params, ms = state.params, state.model_state
  m = np.asarray(paper.draw_masks(jax.random.PRNGKey(5), BATCH, K, 0.5))
  ms = {**ms, "g": {"mask": jnp.asarray(m)}}
  n = model.nets
  fw, stats = _plain_forward(model, params, ms["seg"]["batch_stats"], batch)
  x_s, x_t, y = batch["source"], batch["target"], batch["label"]
  judge = lambda name, x: np.asarray((n.discriminator_aux if name == "d_s" else n.discriminator)
                                     .apply({"params": params[name]}, x), np.float64)
  cycle = (10 * np.mean(np.abs(np.asarray(fw["cyc_s"]) - x_s))
           + 10 * np.mean(np.abs(np.asarray(fw["cyc_t"]) - x_t)))
  up = np.repeat(np.repeat(m, SIZE // K, 1), SIZE // K, 2)[..., None]

  def bce_pair(x, target):
    cells, glob = n.inspector.apply({"params": params["inspector"]}, x)
    return _bce(np.asarray(cells, np.float64), target) + _bce(np.asarray(glob, np.float64),
                                                              target.mean((1, 2)))

  # Step 1 (G): the mask is drawn inside; read it back and write the mix term out with it.
  loss, (ms1, terms) = generator_loss(params, ms, batch, jax.random.PRNGKey(1))
  m1 = np.asarray(ms1["g"]["mask"])
  up1 = np.repeat(np.repeat(m1, SIZE // K, 1), SIZE // K, 2)[..., None]
  np.testing.assert_allclose(float(terms["cycle"]), cycle, rtol=1e-4)
  np.testing.assert_allclose(float(terms["gan_t"]), _ls(judge("d", fw["fake_t"]), 1), rtol=1e-4)
  s_mix = up1 * np.asarray(fw["fake_t"]) + (1 - up1) * x_s
  np.testing.assert_allclose(float(terms["mix_s"]), 0.1 * bce_pair(s_mix, m1), rtol=1e-4)
  np.testing.assert_allclose(float(loss), cycle + float(terms["gan_t"]) + float(terms["mix_s"]),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(ms1["d"]["fake"]), np.asarray(fw["fake_t"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               ms1["seg"]["batch_stats"], stats)  # E's statistics moved twice

  # Step 4 (U) with the fixed mask.
  loss, (ms4, terms) = sides["u"](params, ms, batch, jax.random.PRNGKey(2))
  t_mix = up * x_t + (1 - up) * np.asarray(fw["fake_s"])
  u_want = {"cycle": cycle, "gan_s": _ls(judge("d_s", fw["fake_s"])[..., 0], 1),
            "mix_t": 0.1 * bce_pair(t_mix, m)}
  for k, v in u_want.items():
    np.testing.assert_allclose(float(terms[k]), v, rtol=1e-4, err_msg=k)
  np.testing.assert_array_equal(np.asarray(ms4["d_s"]["fake"]), np.asarray(fw["fake_s"]))

  # Step 3 (E, C, C_ll).
  seg = lambda head, f: n.segmenter.apply({"params": params["seg"][head]}, f, (SIZE, SIZE))
  onehot = np.eye(5)[y]

  def ce_dice(logits):
    p = _softmax(np.asarray(logits, np.float64))
    w = 1 - onehot.sum((0, 1, 2)) / onehot.sum()
    ce = np.mean(np.sum(-w * onehot * np.log(np.clip(p, 0.005, 1)), -1))
    dice = np.mean(2 * (p * onehot).sum((0, 1, 2))
                   / ((p * p).sum((0, 1, 2)) + onehot.sum((0, 1, 2)) + 1e-7))
    return ce, 1 - dice

  ce, dice = ce_dice(seg("c", fw["f_ft"]))
  ce_ll, dice_ll = ce_dice(seg("c_ll", fw["f_ft_ll"]))
  l2 = sum(0.5 * np.sum(np.asarray(p, np.float64) ** 2) for p in jax.tree.leaves(params["seg"]))
  seg_want = {"ce": ce, "dice": dice, "ce_ll": 0.1 * ce_ll, "dice_ll": 0.1 * dice_ll,
              "l2": 1e-4 * l2, "u": 0.1 * sum(u_want.values()),
              "adv_p": 0.1 * _ls(judge("d_p", seg("c", fw["f_t"])), 1),
              "adv_p_ll": 0.01 * _ls(judge("d_p_ll", seg("c_ll", fw["f_t_ll"])), 1),
              "aux": 0.1 * _ls(judge("d_s", fw["fake_s"])[..., 1], 1)}
  loss, (_, terms) = sides["seg"](params, ms, batch, jax.random.PRNGKey(3))
  for k, v in seg_want.items():
    np.testing.assert_allclose(float(terms[k]), v, rtol=1e-4, atol=1e-7, err_msg=k)
  np.testing.assert_allclose(float(loss), sum(seg_want.values()), rtol=1e-4)

  # Steps 2, 5, 6, 7 (critics) on empty pools (they hand back the fakes themselves).
  ms_f = {**ms, "d": {**ms["d"], "fake": fw["fake_t"]}, "d_s": {**ms["d_s"], "fake": fw["fake_s"]}}
  ld = lambda r, f: 0.5 * (_ls(r, 1) + _ls(f, 0))
  loss, _ = critic_loss(params, ms_f, batch, jax.random.PRNGKey(4))
  np.testing.assert_allclose(float(loss), ld(judge("d", x_t), judge("d", fw["fake_t"])), rtol=1e-4)
  loss, (_, terms) = sides["d_s"](params, ms_f, batch, jax.random.PRNGKey(4))
  main = ld(judge("d_s", x_s)[..., 0], judge("d_s", fw["fake_s"])[..., 0])
  aux = ld(judge("d_s", fw["cyc_s"])[..., 1], judge("d_s", fw["fake_s"])[..., 1])
  np.testing.assert_allclose([float(terms["main"]), float(terms["aux"])], [main, aux], rtol=1e-4)
  for name, head, feats in (("d_p", "c", ("f_ft", "f_t")), ("d_p_ll", "c_ll", ("f_ft_ll", "f_t_ll"))):
    loss, _ = sides[name](params, ms, batch, jax.random.PRNGKey(4))
    want = ld(judge(name, seg(head, fw[feats[0]])), judge(name, seg(head, fw[feats[1]])))
    np.testing.assert_allclose(float(loss), want, rtol=1e-4, err_msg=name)
  # Step 8 (Inspector) on real images only.
  loss, _ = sides["inspector"](params, ms, batch, None)
  x_unal = up * x_t + (1 - up) * x_s
  want = 0.1 * (bce_pair(x_s, np.zeros_like(m)) + bce_pair(x_t, np.ones_like(m))
                + bce_pair(x_unal, m))
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def test_one_iteration_is_the_eight_sub_steps_in_the_reference_order(tiny, sgd_host):
  """The engine's iteration against the sub-steps replayed by hand, each on the weights the
  earlier ones left (G, D_T, E+C+C_ll, U, D_S, D_P, D_P_ll, Inspector)."""
  _, _, state, batch = tiny
  (critic_loss, generator_loss, sides), txs, chunk, fresh_state = sgd_host
  losses_by_side = {"g": generator_loss, "d": critic_loss, **sides}
  _, step_rng = jax.random.split(state.rng)
  rngs = {"g": jax.random.fold_in(step_rng, 1),
          "d": jax.random.split(jax.random.fold_in(step_rng, 0), 1)[0],
          **{name: jax.random.fold_in(step_rng, 2 + i) for i, name in enumerate(sides)}}
  order = ["g", "d", "seg", "u", "d_s", "d_p", "d_p_ll", "inspector"]
  assert list(sides) == order[2:]

  def replay(params, ms):
    params = dict(params)
    for side in order:
      fn = lambda p, side=side: losses_by_side[side]({**params, side: p}, ms, batch, rngs[side])
      (_, (ms, _)), grads = jax.value_and_grad(fn, has_aux=True)(params[side])
      updates, _ = txs[side].update(grads, txs[side].init(params[side]), params[side])
      params[side] = optax.apply_updates(params[side], updates)
    return params, ms

  # One compiled program for the eight sub-steps (eight separate ones took 64 s against 45).
  params, ms = jax.jit(replay)(state.params, state.model_state)
  sgd_state = fresh_state()
  got, metrics = chunk(sgd_state, jax.tree.map(lambda x: x[None, None], batch))
  assert bool(metrics["finite"])
  for side in order:  # relative L2 distance of the side's update (SGD: 0.1 x gradient)
    got_u, want_u = (_update(p[side], state.params[side]) for p in (got.params, params))
    assert np.linalg.norm(got_u - want_u) <= TOL_ORDER * np.linalg.norm(want_u), side
  # The handed-on fakes, pools, mask and E's statistics, to the same rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3),
               got.model_state, ms)
  moved = [side for side in order if not all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.array_equal(a, b), state.params[side], got.params[side])))]
  assert moved == order


def test_k_scanned_iterations_equal_k_single_ones(tiny, sgd_host):
  """Two iterations in one call of the scan executor against two calls of one iteration
  (host executor): the same updates, RNG use (masks, pools) and handed-on state."""
  _, model, _, batch = tiny
  losses_and_sides, _, single, fresh_state = sgd_host
  _, scanned = _sgd_chunk(model, losses_and_sides, "scan")
  rng = np.random.default_rng(1)
  steps = 2
  batches = {k: np.stack([rng.permutation(v.reshape(-1)).reshape(v.shape)
                          for _ in range(steps)])[:, None] for k, v in batch.items()}
  # A gentle rate: at 0.1 the second iteration amplifies the executors' float32 rounding
  # through the tiny networks by orders of magnitude.
  state_scan, m_scan = scanned(fresh_state(1e-3), batches)
  state, per_step = fresh_state(1e-3), []
  for i in range(steps):
    state, m = single(state, jax.tree.map(lambda x: x[i:i + 1], batches))
    per_step.append(m)
  for k in ("g_loss", "g_mix_s", "seg_loss", "d_s_loss", "inspector_l_i"):
    np.testing.assert_allclose(np.asarray(m_scan[k]), [float(m[k][0]) for m in per_step],
                               rtol=1e-3, err_msg=k)
  start = fresh_state(1e-3).params
  # The RNG's use exactly: the second iteration's masks.
  np.testing.assert_array_equal(state_scan.model_state["g"]["mask"],
                                state.model_state["g"]["mask"])
  # Each side's two updates, relative L2, bound only gross errors: through the norms of
  # these 2-to-4-wide networks float32 rounding already moves E's by up to 0.6.
  for side in state.params:
    got_u, want_u = (_update(p[side], start[side]) for p in (state_scan.params, state.params))
    assert np.linalg.norm(got_u - want_u) <= 0.75 * np.linalg.norm(want_u), side
  assert int(state_scan.model_state["d"]["pool"].count) == steps  # the pools filled


# --------------------------------------------------------------------------- your data
def _write_case(folder, name, rng, with_foreground=True):
  import nibabel as nib
  image = rng.normal(size=(12, 10, 8)).astype(np.float32)
  label = np.zeros((12, 10, 8), np.int16)
  if with_foreground:
    label[3:8, 2:6, 2:6] = 2
    label[5:7, 4:9, 3:5] = 4
  affine = np.diag([1.5, 1.5, 2.0, 1.0])
  nib.save(nib.Nifti1Image(image, affine), folder / f"{name}_image.nii.gz")
  nib.save(nib.Nifti1Image(label, affine), folder / f"{name}_label.nii.gz")


def test_a_users_volumes_are_a_domain(tmp_path):
  from conftest import data_error
  from medda_jax.config_utils import load_config
  from medda_jax.methods.sifa.experiment import load_domain, validate
  rng = np.random.default_rng(0)
  for case in ("a", "b", "c"):
    _write_case(tmp_path, case, rng)
  _write_case(tmp_path, "empty", rng, with_foreground=False)
  rows = ["image,label,split"] + [f"{k}_image.nii.gz,{k}_label.nii.gz,{s}" for k, s in
                                  (("a", "train"), ("b", "train"), ("c", "test"),
                                   ("empty", "test"))]
  (tmp_path / "ours.csv").write_text("\n".join(rows) + "\n")
  c = load_config("configs/synthmix.py:smoke")
  c.data.user = (f"ours={tmp_path / 'ours.csv'}",)
  c.data.user_labels = "indices"
  c.data.directions = ("mnist->ours",)
  from medda_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="mixes a digit demo domain"):
    validate(c)
  c.data.directions = ("ours->mnist_m",)
  with pytest.raises(ConfigError, match="mixes a digit demo domain"):
    validate(c)
  d = load_domain(c, "ours", tmp_path / "work")
  size = c.data.image_size
  # Two training volumes of 10 coronal (A-P) slices each, in [-1, 1]; labels 0, 2 and 4.
  assert d.images.shape == (20, size, size, 1) and d.labels.shape == (20, size, size)
  assert -1.0 <= float(np.min(d.images)) and float(np.max(d.images)) <= 1.0
  assert set(np.unique(np.asarray(d.labels)).tolist()) == {0, 2, 4}
  assert [v.name for v in d.test] == ["ours_c_image"]  # the one without foreground is left out
  assert d.class_names == {1: "MYO", 2: "LAC", 3: "LVC", 4: "AA"}
  # Mistakes in the table.
  (tmp_path / "bad.csv").write_text("image,label,split\na_image.nii.gz,a_label.nii.gz,val\n")
  c.data.user = (f"ours={tmp_path / 'bad.csv'}",)
  assert "split 'val' is not train or test" in data_error(lambda: load_domain(c, "ours", tmp_path))
  (tmp_path / "miss.csv").write_text("image,label\na_image.nii.gz,nope.nii.gz\n")
  c.data.user = (f"ours={tmp_path / 'miss.csv'}",)
  assert "nope.nii.gz does not exist" in data_error(lambda: load_domain(c, "ours", tmp_path))
  c.data.user = (f"ours={tmp_path / 'ours_missing.csv'}",)
  assert "is not a file" in data_error(lambda: load_domain(c, "ours", tmp_path))
  (tmp_path / "notest.csv").write_text("image,label\na_image.nii.gz,a_label.nii.gz\n")
  c.data.user = (f"ours={tmp_path / 'notest.csv'}",)
  assert "no test volume" in data_error(lambda: load_domain(c, "ours", tmp_path))
