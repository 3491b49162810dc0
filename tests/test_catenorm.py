"""CateNorm's pieces against plain references: the CateNorm layer, the mask resize, the
parameter overhead, the loss, and the two half-steps of one training iteration."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from medda_jax.errors import ConfigError
from medda_jax.methods.catenorm import paper
from medda_jax.models import dualnorm_unet as dn

TINY = dict(widths=(4, 4, 4, 4, 4))


def flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def numpy_bn(x, eps=1e-5):
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + eps)


def test_catenorm_with_zero_gamma_and_beta_is_the_affine_free_batchnorm():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (3, 6, 5, 4)).astype(np.float32)
  mask = jax.nn.softmax(rng.normal(size=(3, 4, 3, 2)).astype(np.float32))
  layer = dn.CateNorm(4)
  v = layer.init(jax.random.PRNGKey(0), x, mask, False)
  p = dict(v["params"])
  for name in ("gamma", "beta"):
    p[name] = jax.tree.map(jnp.zeros_like, p[name])
  out, mutated = layer.apply({"params": p, "batch_stats": v["batch_stats"]}, x, mask, True,
                             mutable=["batch_stats"])
  np.testing.assert_allclose(out, numpy_bn(x), rtol=1e-4, atol=1e-4)
  # its own running statistics, PyTorch's momentum 0.1
  np.testing.assert_allclose(mutated["batch_stats"]["bn"]["mean"],
                             0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
  # with the initial (non-zero) modulation the output is not the plain BN
  out_init = layer.apply(v, x, mask, True, mutable=["batch_stats"])[0]
  assert np.abs(np.asarray(out_init) - numpy_bn(x)).max() > 1e-2


def numpy_resize_align_corners(x, size):
  n, h, w, c = x.shape
  H, W = size
  out = np.zeros((n, H, W, c))
  for i in range(H):
    y = 0.0 if H == 1 else i * (h - 1) / (H - 1)
    y0 = min(int(np.floor(y)), h - 1)
    y1 = min(y0 + 1, h - 1)
    for j in range(W):
      xx = 0.0 if W == 1 else j * (w - 1) / (W - 1)
      x0 = min(int(np.floor(xx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      fy, fx = y - y0, xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


@pytest.mark.parametrize("src, dst", [((8, 8), (4, 4)), ((5, 7), (9, 3)), ((4, 4), (1, 2)),
                                      ((3, 6), (3, 6))])
def test_mask_resize_is_bilinear_with_aligned_corners(src, dst):
  x = np.random.default_rng(1).random((2, *src, 3)).astype(np.float32)
  got = np.asarray(dn.resize_align_corners(jnp.asarray(x), dst))
  np.testing.assert_allclose(got, numpy_resize_align_corners(x, dst), atol=1e-5)
  if dst[0] > 1 and dst[1] > 1 and dst != src:  # differs from jax.image.resize's half-pixel
    other = np.asarray(jax.image.resize(x, (2, *dst, 3), "bilinear"))
    assert np.abs(other - got).max() > 1e-3


def test_bn_pass_ignores_the_catenorm_branch_and_the_cn_pass_reads_the_mask():
  model = dn.DualNormUNet(3, cnrb_blocks=dn.BLOCKS_1_TO_4, **TINY)
  v = dn.init_variables(model, jax.random.PRNGKey(0), 16)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 3)), jnp.float32)
  bn = model.apply(v, x)
  moved = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 1.0 if any(getattr(k, "key", "").startswith("cn_") for k in p) else a,
      v["params"])
  bn_moved = model.apply({"params": moved, "batch_stats": v["batch_stats"]}, x)
  np.testing.assert_array_equal(bn, bn_moved)
  m1 = jax.nn.softmax(bn)
  m2 = jax.nn.softmax(jnp.flip(bn, axis=1) * 3.0)
  assert np.abs(np.asarray(model.apply(v, x, m1) - model.apply(v, x, m2))).max() > 1e-4


def test_unknown_norm_or_block_is_a_config_error():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ConfigError, match="'layer' is not a known normalisation"):
    dn.DualNormUNet(2, norm="layer", **TINY).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ConfigError, match="unknown blocks"):
    dn.DualNormUNet(2, cnrb_blocks=("up9",), **TINY).init(jax.random.PRNGKey(0), x)


def test_catenorm_block1_adds_about_a_thousandth_of_the_parameters():
  w = (32, 64, 128, 256, 512)
  n_cls, in_ch = 2, 3
  conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
  bn = lambda c: 2 * c  # noqa: E731
  res = lambda c: 2 * bn(c) + 2 * conv(c, c, 3)  # noqa: E731
  layers = [conv(in_ch, w[0], 1), res(w[0])]  # inc
  for k in range(1, 5):  # down1..4
    layers += [conv(w[k - 1], w[k], 3), res(w[k])]
  layers.append(res(w[4]))  # mid
  c = w[4]
  for k in range(1, 5):  # up1..4: norm, convT c -> c/2, conv (c/2 + skip) -> skip, res
    skip = w[4 - k]
    layers += [bn(c), conv(c, c // 2, 3), conv(c // 2 + skip, skip, 3), res(skip)]
    c = skip
  layers += [bn(w[0]), conv(w[0], n_cls, 1)]  # outc
  plain = sum(layers)
  catenorm = 2 * (conv(n_cls, w[0] // 2, 3) + 2 * conv(w[0] // 2, w[0], 3))  # inc's two twins

  def count(cnrb):
    shapes = jax.eval_shape(lambda: dn.init_variables(
        dn.DualNormUNet(n_cls, cnrb_blocks=cnrb), jax.random.PRNGKey(0), 16))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))

  assert count(()) == plain
  assert count(dn.BLOCK_1) == plain + catenorm
  assert 0.0005 < catenorm / plain < 0.002  # paper Table 3a: 1.001x


def test_dice_loss_forms_match_plain_loops():
  rng = np.random.default_rng(3)
  for n_cls in (2, 4):
    logits = rng.normal(size=(3, 5, 4, n_cls)).astype(np.float32)
    labels = rng.integers(0, n_cls, (3, 5, 4))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = np.eye(n_cls)[labels]
    if n_cls == 2:
      scores = [(2 * (p[b, ..., c] * y[b, ..., c]).sum() + 1e-6)
                / (p[b, ..., c].sum() + y[b, ..., c].sum() + 1e-6)
                for b in range(3) for c in range(2)]
    else:
      scores = [2 * (p[..., c] * y[..., c]).sum() / ((p[..., c] ** 2).sum()
                                                      + (y[..., c] ** 2).sum())
                for c in range(n_cls)]
    dice = 1 - np.mean(scores)
    ce = -np.mean(np.log((p * y).sum(-1)))
    got = paper.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), 0.5)
    np.testing.assert_allclose(got, 0.5 * dice + 0.5 * ce, rtol=1e-4)


def test_domain_batchnorm_normalises_each_domain_with_its_own_statistics():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
  x[2:] = x[2:] * 5 + 7
  domain = jnp.array([0, 0, 2, 2])
  layer = dn.DomainBatchNorm(3)
  v = layer.init(jax.random.PRNGKey(0), x, domain, False)
  out, mutated = layer.apply(v, x, domain, True, mutable=["batch_stats"])
  np.testing.assert_allclose(out[:2], numpy_bn(x[:2]), atol=1e-4)
  np.testing.assert_allclose(out[2:], numpy_bn(x[2:]), atol=1e-4)
  mean = np.asarray(mutated["batch_stats"]["mean"])
  np.testing.assert_allclose(mean[1], 0.0)  # absent domain: running stats unchanged
  np.testing.assert_allclose(mean[2], 0.1 * x[2:].mean(axis=(0, 1, 2)), rtol=1e-5)


# --------------------------------------------------------------------------- one step
@pytest.fixture(scope="module")
def step_setup():
  model = dn.DualNormUNet(3, cnrb_blocks=dn.BLOCK_1, **TINY)
  # 32 px: the bottleneck's BatchNorm sees 2 x 2 x 2 values (1 x 1 would be degenerate)
  variables = dn.init_variables(model, jax.random.PRNGKey(0), 32)
  rng = np.random.default_rng(5)
  batch = {"images": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 3, (2, 32, 32)), jnp.int32),
           "domains": jnp.zeros((2,), jnp.int32)}
  schedule = paper.plateau(every=50)
  state = paper.create_state(variables, dn.BLOCK_1, 1e-2, schedule)
  steps = {}
  for catenorm in (False, True):
    fn = paper.build_train_step(model, catenorm=catenorm, dice_weight=0.5, clip_value=0.1,
                                schedule=schedule)
    steps[catenorm] = jax.jit(fn)(state, batch)
  return model, variables, batch, steps


def group_changes(before, after):
  b, a = flat(before), flat(after)
  changed = {"shared": 0, "bn": 0, "cn": 0}
  for k in b:
    if not np.array_equal(b[k], a[k]):
      changed[paper.group_of(tuple(k.split("/")), dn.BLOCK_1)] += 1
  return changed


def test_half_step_one_moves_only_shared_and_bn(step_setup):
  _, variables, _, steps = step_setup
  changed = group_changes(variables["params"], steps[False][0].params)
  assert changed["shared"] > 10 and changed["bn"] == 4 and changed["cn"] == 0


def plain_iteration(model, variables, batch, lr=1e-2, clip=0.1):
  """The reference's two half-steps written out: Adam per group, separate forwards."""
  groups = {"shared": [], "bn": [], "cn": []}
  for k in flat(variables["params"]):
    path = k.split("/")
    if any(p.startswith("cn_") for p in path):
      groups["cn"].append(k)
    elif path[0] == "inc_res" and path[1] in ("norm_0", "norm_1"):
      groups["bn"].append(k)
    else:
      groups["shared"].append(k)
  params = {k: jnp.asarray(v) for k, v in flat(variables["params"]).items()}
  nest = lambda p: traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in p.items()})  # noqa: E731
  adams = {g: optax.adam(lr) for g in groups}
  opt = {g: adams[g].init({k: params[k] for k in groups[g]}) for g in groups}

  def loss(p, stats, mask):
    logits, mut = model.apply({"params": nest(p), "batch_stats": stats}, batch["images"], mask,
                              True, batch["domains"], mutable=["batch_stats"])
    return paper.segmentation_loss(logits, batch["labels"], 0.5), (logits, mut["batch_stats"])

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, (logits_b, stats)), g1 = grad_fn(params, variables["batch_stats"], None)
  for g in ("shared", "bn"):
    sub = {k: params[k] for k in groups[g]}
    upd, opt[g] = adams[g].update({k: g1[k] for k in groups[g]}, opt[g], sub)
    params.update(optax.apply_updates(sub, upd))
  after_half_one = dict(params)
  mask = jax.nn.softmax(logits_b, axis=-1)
  (loss_cn, _), g2 = grad_fn(params, stats, mask)
  for g in ("shared", "cn"):
    sub = {k: params[k] for k in groups[g]}
    grads = {k: jnp.clip(g2[k], -clip, clip) for k in groups[g]}
    upd, opt[g] = adams[g].update(grads, opt[g], sub)
    params.update(optax.apply_updates(sub, upd))
  # Parameters whose gradient is zero up to rounding (a bias whose every path ends in a
  # norm, which removes any constant shift): Adam scales the rounding noise up to +-lr.
  size = {k: max(float(jnp.abs(g1[k]).max()), float(jnp.abs(g2[k]).max())) for k in g1}
  typical = float(np.median(list(size.values())))
  degenerate = {k for k, v in size.items() if v < 1e-4 * typical}
  return after_half_one, params, float(loss_cn), degenerate


def test_combined_step_equals_the_two_half_steps_written_plainly(step_setup):
  model, variables, batch, steps = step_setup
  after_one, after_two, loss_cn, degenerate = plain_iteration(model, variables, batch)
  assert len(degenerate) < len(after_two) // 4
  got_one, got_two = flat(steps[False][0].params), flat(steps[True][0].params)
  # the CateNorm loss: updated shared weights, mask of the pre-update BN forward
  np.testing.assert_allclose(float(steps[True][1]["loss_cn"]), loss_cn, rtol=1e-5)
  for k in after_two:
    if k in degenerate:
      continue
    # 1 % of the learning rate: Adam's first steps are +-lr where the gradient is not tiny
    np.testing.assert_allclose(got_one[k], after_one[k], rtol=1e-4, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(got_two[k], after_two[k], rtol=1e-4, atol=1e-4, err_msg=k)
  # half-step 2 moves shared and cn only: the CNRB's BN parameters stay at half-step 1's
  changed = group_changes(steps[False][0].params, steps[True][0].params)
  assert changed["shared"] > 10 and changed["cn"] > 0 and changed["bn"] == 0


# --------------------------------------------------------------------------- prostate split file
def write_prostate_case(site_dir, stem, shape=(8, 8, 3)):
  import nibabel as nib
  site_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(stem))
  label = np.zeros(shape, np.uint8)
  label[2:5, 2:5, 1] = 1
  nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4)),
           str(site_dir / f"{stem}.nii.gz"))
  nib.save(nib.Nifti1Image(label, np.eye(4)), str(site_dir / f"{stem}_segmentation.nii.gz"))


def test_stage_two_starts_from_stage_one_except_the_catenorm_branch():
  def tree(value):
    return {"params": {"inc_res": {"norm_0": {"scale": np.full(2, value)},
                                   "cn_0": {"kernel": np.full(3, value)}},
                       "outc": {"kernel": np.full(4, value)}},
            "batch_stats": {"inc_res": {"norm_0": {"mean": np.full(2, value)},
                                        "cn_0": {"mean": np.full(2, value)}}}}
  stage1, fresh = tree(1.0), tree(2.0)
  # CateNorm block 1: everything from stage 1 but the cn_ parameters and statistics.
  got = traverse_util.flatten_dict(paper.stage2_variables(stage1, fresh, ("inc",)))
  for path, x in got.items():
    want = 2.0 if any(p.startswith("cn_") for p in path) else 1.0
    np.testing.assert_array_equal(x, np.full_like(x, want), err_msg=str(path))
  # The equal-length BN control (no CNRB, a network without cn_ entries): stage 1 whole.
  plain = lambda v: {k: {m: {n: x for n, x in leaf.items() if not n.startswith("cn_")}
                         for m, leaf in sub.items()} for k, sub in tree(v).items()}
  got = traverse_util.flatten_dict(paper.stage2_variables(plain(1.0), plain(2.0), ()))
  assert got and all(np.all(x == 1.0) for x in got.values())


def test_prostate_split_file_selects_and_orders_the_cases(tmp_path):
  from conftest import data_error
  from medda_jax.data import prostate
  site = tmp_path / "RUNMC"
  for stem in ("Case00", "Case01", "Case02"):
    write_prostate_case(site, stem)
  (site / "all_list.txt").write_text("Case02.nii.gz\n\n# a comment\nCase00\n")
  got = prostate.load_prostate(tmp_path, image_size=8, split_file="all_list.txt")
  assert [v.id for v in got["RUNMC"]] == ["Case02", "Case00"]
  assert len(prostate.load_prostate(tmp_path, image_size=8)["RUNMC"]) == 3  # no file asked
  (site / "all_list.txt").write_text("Case07\n")
  assert "lists Case07" in data_error(
      lambda: prostate.load_prostate(tmp_path, image_size=8, split_file="all_list.txt"))
  (site / "all_list.txt").unlink()
  message = data_error(
      lambda: prostate.load_prostate(tmp_path, image_size=8, split_file="all_list.txt"))
  assert "has no split file all_list.txt" in message and "RUNMC" in message
