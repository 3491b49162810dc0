"""The AvaGrad study end to end on its smoke config (one shared run): the table and the
figure, resumption after kill -9, the NaN stop, and one-line errors; plus the pieces the
driver is made of (the network, the loss, the schedule, the optimiser states, the
augmentation pipeline) on the smallest shapes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import kill_after_checkpoint, param_count, run_train, shared_run
from medda_jax.config_utils import load_config
from medda_jax.models import nnunet2d

CONFIG = "configs/avagrad.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"

avagrad_run = shared_run(CONFIG, name="avagrad_run", demo_data=True)


# --------------------------------------------------------------------------- the network
def plain_param_count(stages, base, cap, classes, in_channels=1):
  """The layer list of the network written out: conv k*k*cin*cout + bias, norm 2*cout."""
  feats = [min(base * 2**i, cap) for i in range(stages)]
  total, cin = 0, in_channels
  for f in feats:  # context: two conv-norm blocks per stage
    total += 9 * cin * f + f + 2 * f
    total += 9 * f * f + f + 2 * f
    cin = f
  for level in reversed(range(stages - 1)):
    f = feats[level]
    total += 4 * feats[level + 1] * f  # transposed conv, no bias
    total += 9 * (2 * f) * f + f + 2 * f  # localization on [up, skip]
    total += 9 * f * f + f + 2 * f
    if level < max(stages - 2, 1):
      total += f * classes  # 1x1 segmentation head, no bias
  return total


@pytest.mark.parametrize("stages, base, cap", [(3, 4, 8), (7, 32, 512)])
def test_network_parameter_count_is_the_layer_list_sum(stages, base, cap):
  model = nnunet2d.NnUNet2D(num_classes=3, stages=stages, base=base, cap=cap)
  side = 2 ** (stages - 1) * 2
  shapes = abstract_variables_plain(model, (1, side, side, 1))
  assert param_count(shapes["params"]) == plain_param_count(stages, base, cap, 3)
  names = set(shapes["params"])
  assert {nnunet2d.layer_group(n) for n in names} == set(nnunet2d.LAYER_GROUPS)
  assert len([n for n in names if n.startswith("segmentation")]) == max(stages - 2, 1)


def abstract_variables_plain(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_outputs_shapes_and_deep_supervision_weights():
  model = nnunet2d.NnUNet2D(num_classes=2, stages=4, base=2, cap=8)
  x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
  outs = jax.eval_shape(lambda k, x: model.apply(model.init(k, x), x), jax.random.key(0), x)
  assert [o.shape for o in outs] == [(2, 16, 16, 2), (2, 8, 8, 2)]
  # nnU-Net: 1, 1/2, 1/4 for three decoder outputs, the last (lowest) set to 0, normalised
  np.testing.assert_allclose(nnunet2d.deep_supervision_weights(3), [2 / 3, 1 / 3, 0.0])
  np.testing.assert_allclose(nnunet2d.deep_supervision_weights(4), np.array([1, .5, .25, 0]) / 1.75)
  np.testing.assert_allclose(nnunet2d.output_weights(2), [2 / 3, 1 / 3])
  np.testing.assert_allclose(nnunet2d.output_weights(1), [1.0])


def test_loss_is_dice_plus_ce_weighted_over_scales():
  rng = np.random.default_rng(0)
  logits = [rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(2, 4, 4, 3))]
  labels = rng.integers(0, 3, size=(2, 8, 8))

  def plain(lg, lb):
    p = np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)
    ce = np.mean([-np.log(p[n, i, j, lb[n, i, j]]) for n in range(lg.shape[0])
                  for i in range(lg.shape[1]) for j in range(lg.shape[2])])
    dices = []
    for k in (1, 2):  # foreground classes, batch Dice
      y = lb == k
      tp, fp, fn = (p[..., k] * y).sum(), (p[..., k] * ~y).sum(), ((1 - p[..., k]) * y).sum()
      dices.append((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5))
    return ce + 1 - np.mean(dices)

  want = 2 / 3 * plain(logits[0], labels) + 1 / 3 * plain(logits[1], labels[:, ::2, ::2])
  got = jax.jit(nnunet2d.deep_supervision_loss)([jnp.asarray(l, jnp.float32) for l in logits],
                                                jnp.asarray(labels))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# --------------------------------------------------------------------------- optimiser pieces
def test_poly_factor_is_optax_polynomial_schedule_and_power_0_is_constant():
  from medda_jax.methods.avagrad import paper
  sched = optax.polynomial_schedule(1.0, 0.0, power=0.9, transition_steps=40)
  for t in (0, 1, 17, 39, 40, 55):
    np.testing.assert_allclose(float(paper.poly_factor(t, 40, 0.9)), float(sched(t)), atol=1e-6)
    assert float(paper.poly_factor(t, 40, 0.0)) == 1.0


def test_optimizers_keep_their_numbers_in_the_state_and_sgd_is_torch_nesterov():
  """Two learning rates and budgets give states of one structure (one compiled step);
  nnU-Net's SGD step equals torch's SGD(nesterov, weight_decay) written out."""
  from medda_jax.methods.avagrad import paper
  c = load_config(CONFIG)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  for name in paper.OPTIMIZERS:
    a = paper.optimizer(name, learning_rate=0.1, total_steps=10, schedule="poly",
                        weight_decay=1e-3, settings=c.optim[name]).init(params)
    b = paper.optimizer(name, learning_rate=7.0, total_steps=99, schedule="constant",
                        weight_decay=0.0, settings=c.optim[name]).init(params)
    assert jax.tree.structure(a) == jax.tree.structure(b)
  s = ml_collections.ConfigDict(dict(momentum=0.99, nesterov=True))
  tx = paper.optimizer("sgd", learning_rate=0.01, total_steps=8, schedule="poly",
                       weight_decay=3e-5, settings=s)
  state = tx.init(params)
  w, buf = np.array([1.0, -2.0, 0.5]), None
  p = params
  for t in range(4):
    g = np.array([0.3, -0.1, 0.2]) * (t + 1)
    d = g + 3e-5 * w
    buf = d if buf is None else 0.99 * buf + d
    lr = 0.01 * (1 - t / 8) ** 0.9
    w = w - lr * (d + 0.99 * buf)
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(p["w"]), w, rtol=1e-5)


def test_update_size_hook_records_mean_abs_update_per_layer_and_epoch():
  from medda_jax.engine.supervised import TrainState
  from medda_jax.methods.avagrad import paper
  s = ml_collections.ConfigDict(dict(momentum=0.0, nesterov=False))
  params = {"context_0_0": {"k": jnp.ones((2, 2))}, "segmentation_0": {"k": jnp.ones((3,))}}
  tx = paper.optimizer("sgd", learning_rate=1.0, total_steps=100, schedule="constant",
                       weight_decay=0.0, settings=s)
  state = TrainState.create(params, tx)
  hook = paper.EpochUpdateSizes(steps_per_epoch=2, steps_per_call=1)
  grads = [{"context_0_0": {"k": jnp.full((2, 2), g)}, "segmentation_0": {"k": jnp.full((3,), -g)}}
           for g in (1.0, 3.0, 0.5, 0.5)]
  for call, g in enumerate(grads, start=1):
    u, opt_state = tx.update(g, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, u), opt_state=opt_state)
    state, stop = hook.after_call(state, call)
    assert not stop
  assert hook.epochs == [{"context_0_0": 2.0, "segmentation_0": 2.0},
                         {"context_0_0": 0.5, "segmentation_0": 0.5}]
  again = paper.EpochUpdateSizes(2, 1)
  again.set_state(json.loads(json.dumps(hook.get_state())))
  assert again.epochs == hook.epochs
  assert paper.group_update_sizes(hook.epochs) == {"context": [2.0, 0.5],
                                                   "segmentation": [2.0, 0.5]}


def test_training_samples_are_a_function_of_seed_and_index():
  from medda_jax.data import mixed
  from medda_jax.data.volumes import Volume
  from medda_jax.methods.avagrad import augment
  rng = np.random.default_rng(0)
  vols = [Volume(f"v{i}", "s", rng.random((4, 12, 12)).astype(np.float32),
                 (rng.random((4, 12, 12)) > 0.5).astype(np.uint8), (1.0, 1.0, 1.0))
          for i in range(2)]
  pool = mixed.SlicePool.of(vols)
  every = augment.AugmentSettings(p_rotation=1, p_scale=1, p_noise=1, p_blur=1, p_brightness=1,
                                  p_contrast=1, p_low_resolution=1, p_gamma_inverted=1,
                                  p_gamma=1, p_mirror=1)
  kw = dict(patch=8, batch_size=2, total_steps=4, steps_per_call=2, settings=every, seed=3)
  ds = augment.training_batches(pool, **kw)
  first = ds[1]
  assert first["images"].shape == (2, 2, 8, 8, 1) and first["masks"].shape == (2, 2, 8, 8)
  assert first["masks"].dtype == np.int32 and set(np.unique(first["masks"])) <= {0, 1}
  again = augment.training_batches(pool, **kw)[1]
  np.testing.assert_array_equal(first["images"], again["images"])
  # two processes: each the contiguous half of every global batch
  halves = [augment.training_batches(pool, **kw, process_index=p, process_count=2)[1]
            for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves], axis=1),
                                first["images"])
  plain = augment.training_batches(pool, **dict(kw, settings=augment.AugmentSettings(
      enabled=False)))[1]
  assert not np.array_equal(plain["images"], first["images"])


# --------------------------------------------------------------------------- end to end
def test_smoke_writes_the_table_and_the_figure(avagrad_run):
  workdir, proc = avagrad_run
  c = load_config(CONFIG)
  final = json.loads(proc.stdout)
  results = json.loads((workdir / "results.json").read_text())
  runs = json.loads((workdir / "avagrad_runs.json").read_text())
  assert len(runs) == len(c.runs) * len(c.seeds)
  table = results["table"]["brain"]
  rows = list(table)
  assert rows[0] == "site_a_clean test" and len(rows) == 6  # source test + five unseen sites
  for row in rows:
    for column, _, _ in c.runs:
      per_seed = [np.mean([v["brain"]["sdice"] for v in runs[f"{column}/seed{s}"]["volumes"][row]
                           .values()]) for s in c.seeds]
      assert table[row][column][0] == pytest.approx(np.mean(per_seed))
      assert table[row][column][1] == pytest.approx(np.std(per_seed))
      assert 0.0 <= table[row][column][0] <= 1.0
      assert final[f"sdice/brain/{row}/{column}"] == pytest.approx(table[row][column][0])
  for column, _, epochs in c.runs:
    sizes = runs[f"{column}/seed0"]["update_sizes"]
    assert len(sizes) == epochs and all(v > 0 for v in sizes[0].values())
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md and "| site_f_inverted |" in md
  assert (workdir / "update_sizes.png").read_bytes()[:8] == PNG
  assert not list((workdir / "checkpoints").glob("*/*"))  # recorded runs drop theirs


def test_killed_run_resumes_to_the_same_table(avagrad_run, tmp_path, demo_cache):
  reference, _ = avagrad_run
  killed = tmp_path / "killed"
  one = ("--config.runs=(('AG-2','avagrad',2),)", "--config.seeds=(0,)")
  cache = f"--config.data.cache_dir={demo_cache}"
  child = run_train(killed, cache, *one, config=CONFIG, background=True)
  step = kill_after_checkpoint(child, killed / "checkpoints" / "AG-2_seed0")
  assert not (killed / "results.md").exists(), step
  proc = run_train(killed, cache, *one, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "avagrad_runs.json").read_text())["AG-2/seed0"]
  want = json.loads((reference / "avagrad_runs.json").read_text())["AG-2/seed0"]
  for row, volumes in want["volumes"].items():
    for vid, scores in volumes.items():
      np.testing.assert_allclose(got["volumes"][row][vid]["brain"]["sdice"],
                                 scores["brain"]["sdice"], atol=1e-6, err_msg=f"{row} {vid}")
  np.testing.assert_allclose(
      [list(e.values()) for e in got["update_sizes"]],
      [list(e.values()) for e in want["update_sizes"]], rtol=1e-4)


def test_a_diverging_run_stops_with_exit_3(avagrad_run, tmp_path, demo_cache):
  del avagrad_run  # after it, on its worker: its compiled step is in the cache
  proc = run_train(tmp_path / "nan", f"--config.data.cache_dir={demo_cache}",
                   "--config.optim.avagrad.learning_rate=1e38", "--config.runs=(('AG-2','avagrad',2),)",
                   "--config.seeds=(0,)", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "nan" / "results.md").exists()


@pytest.mark.parametrize("overrides, message", [
    (("--config.runs=(('X-2','lion',2),)",), "unknown optimizer 'lion'"),
    (("--config.data.source=cc359", "--config.data.train_site=ge_3",
      "--config.data.root=/nonexistent/cc359"),
     "config.data.root='/nonexistent/cc359' does not exist"),
])
def test_bad_inputs_end_with_one_error_line(tmp_path, overrides, message):
  proc = run_train(tmp_path / "bad", *overrides, config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and message in last, last


@pytest.mark.parametrize("field, value, message", [
    ("data.source", "cc359", "config.data.root must name the CC359 folder"),
    ("data.patch", 18, "must be divisible by"),
    ("runs", (("S-2", "sgd", 2), ("S-2", "sgd", 5)), "column name 'S-2' twice"),
    ("runs", (("S-2", "sgd", 0),), "epochs >= 1"),
    ("optim.avagrad.normalizer", "per_tensor", "config.optim.avagrad.normalizer"),
    ("train.schedule", "cosine", "config.train.schedule"),
    ("seeds", (), "config.seeds"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import avagrad
  c = load_config(CONFIG)
  *path, leaf = field.split(".")
  node = c
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    avagrad.validate(c)
