"""SimMIM pre-training and transfer: the masks, the pixel-shuffle head and the masked L1
loss against plain references, the mask token's reach on both backbones, the optimiser's
decay mask and layer-wise rates, grafting into a classifier, and the method end to end on
its smoke config (one shared run): tables and figures, the saved encoder grafted exactly,
kill -9 and rerun, the NaN stop, one-line errors."""

from __future__ import annotations

import json
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (check_grafted_classifier, config_with, kill_after_checkpoint,
                      run_train, shared_run)
from medda_jax.config_utils import load_config
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.simmim import experiment, paper
from medda_jax.models import swin as swin_lib
from medda_jax.models import vit as vit_lib

CONFIG = "configs/simmim.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"

simmim_run = shared_run(CONFIG, name="simmim_run")


# --------------------------------------------------------------------------- masks
def test_random_mask_masks_ceil_of_the_ratio_and_depends_on_the_generator():
  masks = [paper.random_mask(np.random.default_rng(s), (6, 7), 0.6) for s in range(4)]
  assert all(m.shape == (6, 7) and m.sum() == math.ceil(42 * 0.6) for m in masks)
  assert len({m.tobytes() for m in masks}) == 4


def test_upsample_mask_is_each_cell_repeated():
  mask = np.random.default_rng(0).random((2, 3, 2)) < 0.5
  up = paper.upsample_mask(mask, 4)
  assert up.shape == (2, 12, 8)
  for n in range(2):
    for i in range(12):
      for j in range(8):
        assert up[n, i, j] == mask[n, i // 4, j // 4]


def test_batch_masks_are_a_function_of_seed_and_sample_id():
  """A resumed run redraws the same masks: each depends on (seed, sample id) only."""
  a = paper.batch_masks(3, np.array([10, 11, 12]), 64, 16, 4, 0.6)
  b = paper.batch_masks(3, np.array([12, 99]), 64, 16, 4, 0.6)
  assert a.shape == (3, 16, 16)
  np.testing.assert_array_equal(a[2], b[0])
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a, paper.batch_masks(4, np.array([10, 11, 12]), 64, 16, 4, 0.6))
  # each 16-pixel cell is all masked or all kept at the 4-pixel patch grid
  cells = a.reshape(3, 4, 4, 4, 4)
  assert np.all(cells.min(axis=(2, 4)) == cells.max(axis=(2, 4)))


# --------------------------------------------------------------------------- head and loss
def test_pixel_shuffle_is_torch_pixel_shuffle_written_out():
  r, c = 2, 3
  x = np.random.default_rng(0).normal(size=(2, 3, 4, c * r * r)).astype(np.float32)
  want = np.zeros((2, 6, 8, c), np.float32)
  for n in range(2):
    for h in range(3):
      for w in range(4):
        for ch in range(c):
          for i in range(r):
            for j in range(r):
              want[n, h * r + i, w * r + j, ch] = x[n, h, w, ch * r * r + i * r + j]
  np.testing.assert_array_equal(np.asarray(paper.pixel_shuffle(jnp.asarray(x), r)), want)


def test_masked_l1_averages_over_masked_pixels_and_channels_only():
  rng = np.random.default_rng(1)
  x, rec = rng.normal(size=(2, 4, 4, 2)), rng.normal(size=(2, 4, 4, 2))
  mask = rng.random((2, 4, 4)) < 0.4
  total, count = 0.0, 0
  for n, i, j in zip(*np.nonzero(mask)):
    for ch in range(2):
      total += abs(rec[n, i, j, ch] - x[n, i, j, ch])
      count += 1
  got = float(paper.masked_l1(jnp.asarray(x), jnp.asarray(rec), jnp.asarray(mask)))
  np.testing.assert_allclose(got, total / count, rtol=1e-5)
  changed = np.where(mask[..., None], rec, rec + 5.0)  # unmasked pixels do not count
  np.testing.assert_allclose(float(paper.masked_l1(jnp.asarray(x), jnp.asarray(changed),
                                                   jnp.asarray(mask))), total / count, rtol=1e-5)


# --------------------------------------------------------------------------- mask token
ENCODERS = {
    "vit": (lambda: vit_lib.VisionTransformer(image_size=None, patch_size=4, width=8, depth=1,
                                              num_heads=2, mlp_dim=8, dropout=0.0), 4, 4),
    "swin": (lambda: swin_lib.SwinTransformer(image_size=None, patch_size=2, embed_dim=4,
                                              depths=(1, 2), num_heads=(1, 2), window_size=2,
                                              drop_path_rate=0.0), 2, 4),
}


@pytest.mark.parametrize("backbone", sorted(ENCODERS))
def test_simmim_reconstructs_the_input_shape_and_ignores_masked_pixels(backbone):
  """The mask token replaces masked patches entirely: changing the pixels under the mask
  changes nothing; changing one unmasked pixel changes the reconstruction."""
  make, patch, stride = ENCODERS[backbone]
  model = paper.SimMIM(make(), stride=stride, channels=1)
  rng = np.random.default_rng(0)
  x = rng.random((2, 16, 16, 1)).astype(np.float32)
  mask = paper.upsample_mask(rng.random((2, 2, 2)) < 0.5, 8 // patch)
  mask[:, 0, 0], mask[:, -1, -1] = True, False
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, mask)["params"]
  assert "mask_token" in params["encoder"] and "head" not in params["encoder"]
  run = jax.jit(lambda x: model.apply({"params": params}, x, mask))
  rec = np.asarray(run(x))
  assert rec.shape == x.shape
  pixel = paper.upsample_mask(mask, patch)[..., None]
  noise = rng.random(x.shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(run(np.where(pixel, noise, x))), rec, atol=1e-6)
  assert not np.allclose(np.asarray(run(np.where(pixel, x, noise))), rec, atol=1e-3)


# --------------------------------------------------------------------------- optimiser
def test_decay_mask_spares_biases_norms_position_tables_and_tokens():
  model = paper.SimMIM(ENCODERS["vit"][0](), stride=4, channels=1)
  x = jnp.zeros((1, 16, 16, 1))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, jnp.zeros((1, 4, 4), bool))
  flat = flax.traverse_util.flatten_dict(paper.decay_mask(shapes["params"]), sep="/")
  assert flat["encoder/conv_proj/kernel"] and flat["decoder/kernel"]
  assert flat["encoder/encoder/encoder_layer_0/mlp/linear_1/kernel"]
  for name in ("encoder/conv_proj/bias", "encoder/encoder/pos_embedding",
               "encoder/class_token", "encoder/mask_token", "encoder/encoder/ln/scale",
               "encoder/encoder/encoder_layer_0/ln_1/bias",
               "encoder/encoder/encoder_layer_0/self_attention/query/bias"):
    assert not flat[name], name


def test_layer_ids_follow_simmim_for_both_backbones():
  vit = [(["conv_proj", "kernel"], 0), (["class_token"], 0),
         (["encoder", "pos_embedding"], 0), (["encoder", "encoder_layer_0", "ln_1", "scale"], 1),
         (["encoder", "encoder_layer_11", "mlp", "linear_2", "bias"], 12),
         (["encoder", "ln", "scale"], 13), (["head", "kernel"], 13)]
  for names, want in vit:
    assert paper.layer_id(names, "vit", (12,)) == want, names
  depths = (2, 2, 6, 2)
  swin = [(["patch_embed", "proj", "kernel"], 0), (["layers_0", "blocks_0", "norm1", "scale"], 1),
          (["layers_0", "blocks_1", "attn", "qkv", "kernel"], 2),
          (["layers_0", "downsample", "reduction", "kernel"], 2),
          (["layers_2", "blocks_5", "mlp", "fc1", "kernel"], 1 + 4 + 5),
          (["layers_3", "blocks_1", "norm2", "bias"], 12), (["norm", "scale"], 13),
          (["head", "kernel"], 13)]
  for names, want in swin:
    assert paper.layer_id(names, "swin", depths) == want, names


def test_layer_decay_scales_each_layers_first_update():
  """Adam's first update is lr x sign(grad) (up to eps): with layer decay d the embedding's
  is d^(blocks + 1) of the head's, a block's d^(blocks + 1 - id)."""
  params = {"conv_proj": {"kernel": jnp.ones((2, 2))},
            "encoder": {"encoder_layer_0": {"w": jnp.ones((2, 2))},
                        "encoder_layer_1": {"w": jnp.ones((2, 2))}},
            "head": {"kernel": jnp.ones((2, 2))}}
  tx = paper.finetune_optimizer(learning_rate=0.1, total_steps=100, warmup_steps=0,
                                weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1e9,
                                layer_decay=0.5, backbone="vit", depths=(2,), params=params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  head = float(updates["head"]["kernel"][0, 0])
  np.testing.assert_allclose(head, -0.1, rtol=1e-4)
  np.testing.assert_allclose(float(updates["conv_proj"]["kernel"][0, 0]), head * 0.5 ** 3,
                             rtol=1e-4)
  np.testing.assert_allclose(float(updates["encoder"]["encoder_layer_1"]["w"][0, 0]),
                             head * 0.5, rtol=1e-4)


def test_warmup_then_cosine_to_the_floor():
  tx = paper.pretrain_optimizer(learning_rate=1.0, total_steps=10, warmup_steps=2,
                                weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1e9, min_lr=0.1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 10, end_value=0.1)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for step in range(10):  # Adam with a constant gradient: the update is the rate
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(-float(updates["w"][0]), float(schedule(step)), rtol=1e-3,
                               atol=1e-7)


def test_linear_scaling_rule():
  assert paper.scaled_lr(1e-4, 2048, 512) == pytest.approx(4e-4)


# --------------------------------------------------------------------------- grafting
def test_graft_copies_the_encoder_drops_the_mask_token_and_keeps_the_new_head():
  from medda_jax.engine.graft import graft
  net = ENCODERS["vit"][0]().clone(num_classes=3)
  model = paper.SimMIM(ENCODERS["vit"][0](), stride=4, channels=1)
  x = jnp.zeros((1, 16, 16, 1))
  source = jax.jit(model.init)(jax.random.PRNGKey(1), x, jnp.zeros((1, 4, 4), bool))["params"]
  target = jax.jit(net.init)(jax.random.PRNGKey(2), x)["params"]
  grafted, paths = graft(target, source, prefix="encoder", skip=("mask_token",))
  src, new, old = (flax.traverse_util.flatten_dict(t, sep="/")
                   for t in (source["encoder"], grafted, target))
  assert "mask_token" not in new and set(paths) == set(src) - {"mask_token"}
  for path in paths:
    np.testing.assert_array_equal(new[path], src[path])
  np.testing.assert_array_equal(new["head/kernel"], old["head/kernel"])
  with pytest.raises(DataError, match="does not fit the model: parameter encoder/pos_embedding"):
    bigger = jax.jit(net.init)(jax.random.PRNGKey(2), jnp.zeros((1, 20, 20, 1)))["params"]
    graft(bigger, source, prefix="encoder", skip=("mask_token",))


def test_position_embedding_interpolation_keeps_the_class_token_and_constant_grids():
  rng = np.random.default_rng(0)
  value = rng.normal(size=(1, 1 + 16, 3)).astype(np.float32)
  np.testing.assert_allclose(experiment.interpolate_position_embedding(value, 17), value,
                             atol=1e-6)
  const = np.concatenate([value[:, :1], np.full((1, 16, 3), 0.7, np.float32)], axis=1)
  out = experiment.interpolate_position_embedding(const, 1 + 36)
  assert out.shape == (1, 37, 3)
  np.testing.assert_array_equal(out[:, :1], value[:, :1])
  np.testing.assert_allclose(out[:, 1:], 0.7, atol=1e-5)


def test_random_resized_crop_of_the_whole_image_is_the_image_or_its_mirror():
  image = np.random.default_rng(0).random((8, 8)).astype(np.float32)
  outs = [experiment.random_resized_crop(image, 8, np.random.default_rng(s), scale=(1, 1),
                                         ratio=(1, 1)) for s in range(6)]
  for out in outs:
    assert out.shape == (8, 8)
    assert np.allclose(out, image, atol=1e-5) or np.allclose(out, image[:, ::-1], atol=1e-5)
  assert any(np.allclose(o, image[:, ::-1], atol=1e-5) for o in outs)


# --------------------------------------------------------------------------- end to end
def test_smoke_writes_tables_and_figures_labelled_as_demo(simmim_run):
  workdir, _ = simmim_run
  results = json.loads((workdir / "results.json").read_text())
  assert "DEMO DATA" in results["label"] and "random weights" in results["label"]
  c = load_config(CONFIG)
  table = results["table"]
  assert set(table) == set(c.backbones)
  for backbone in c.backbones:
    assert list(table[backbone]) == experiment.inits(c, backbone)
    for init, cells in table[backbone].items():
      mean, std, n = cells["demo"]
      assert 0.0 <= mean <= 1.0 and std >= 0.0 and n == len(c.seeds), (backbone, init)
  runs = json.loads((workdir / experiment.RESULTS_FILE).read_text())
  aucs = [runs[f"vit/{experiment.SCRATCH}/demo/seed{s}"]["test_auc"] for s in c.seeds]
  np.testing.assert_allclose(table["vit"][experiment.SCRATCH]["demo"][:2],
                             [np.mean(aucs), np.std(aucs)])
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "| SimMIM continued | swin |" in md
  for name in ("reconstructions_swin.png", "reconstructions_vit.png", "transfer.png"):
    assert (workdir / name).read_bytes()[:8] == PNG, name


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_grafted_classifier_holds_exactly_the_saved_encoder(simmim_run, backbone):
  """The pre-training checkpoint read back and grafted: every shared parameter equals the
  saved one (Swin's tables and ViT's position embeddings after their interpolation to the
  fine-tuning grid), the head is the fresh one, the continued run differs from its start."""
  workdir, _ = simmim_run
  c = load_config(CONFIG)
  study = experiment.Study(c, workdir, backbone)
  saved = study.saved_pretraining("SimMIM in-domain")
  continued = study.saved_pretraining("SimMIM continued")
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                      jax.tree.leaves(continued)))
  resized = check_grafted_classifier(study, "SimMIM in-domain", saved)
  assert resized >= 1  # pre-training 24 px, fine-tuning 32 px: tables / embeddings resized


def test_a_checkpoint_of_another_model_is_refused_in_one_line(simmim_run):
  workdir, _ = simmim_run
  c = config_with(CONFIG, "model.vit.width", 24)
  study = experiment.Study(c, workdir, "vit")
  with pytest.raises(DataError) as e:
    study.saved_pretraining("SimMIM in-domain")
  assert "holds another model" in str(e.value) and "\n" not in str(e.value)


def test_killed_run_resumes_to_the_same_results(simmim_run, tmp_path):
  """kill -9 in a pre-training run, then in a fine-tuning run: the rerun ends with the same
  curves and test AUCs as the uninterrupted run."""
  reference, _ = simmim_run
  killed = tmp_path / "killed"
  one = ("--config.backbones=('vit',)", "--config.seeds=(0,)")
  child = run_train(killed, *one, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "pretrain" / "vit_simmim_in_domain")  # pre-training
  child = run_train(killed, *one, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "finetune" / "vit_scratch_demo_seed0")  # fine-tuning
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *one, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / experiment.RESULTS_FILE).read_text())
  want = json.loads((reference / experiment.RESULTS_FILE).read_text())
  for key in ("pretrain/vit/SimMIM in-domain", "pretrain/vit/SimMIM continued"):
    np.testing.assert_allclose(got[key]["curve"], want[key]["curve"], rtol=1e-5, err_msg=key)
  for init in experiment.inits(load_config(CONFIG)):
    key = f"vit/{init}/demo/seed0"
    np.testing.assert_allclose(got[key]["test_auc"], want[key]["test_auc"], atol=1e-6,
                               err_msg=key)


def test_a_diverging_run_stops_with_exit_3(simmim_run, tmp_path):
  del simmim_run  # after it, on its worker: its compiled steps are in the cache
  proc = run_train(tmp_path / "nan", "--config.pretrain.base_lr=1e30",
                   "--config.pretrain.clip_norm=1e30", "--config.backbones=('vit',)",
                   "--config.seeds=(0,)", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "nan" / "results.md").exists()


@pytest.mark.parametrize("field, value, message", [
    ("backbones", ("resnet",), "unknown entries"),
    ("pretrain.runs", (("A", "imagenet", ""),), "unknown corpus 'imagenet'"),
    ("pretrain.runs", (("A", "in_domain", "B"),), "continues from 'B'"),
    ("pretrain.runs", (("scratch", "in_domain", ""),), "reserved"),
    ("pretrain.mask_patch", 6, "multiple of the"),
    ("model.swin.window", 3, "does not divide"),
    ("transfer.targets", ("natural",), "unknown target 'natural'"),
    ("transfer.targets", ("chexpert",), "config.data.dirs.chexpert must name"),
    ("pretrain.warmup_epochs", 2, "must be below"),
    ("pretrain.mask_ratio", 1.5, "out of range"),
    ("data.user", ("natural=/data/photos",), "taken by the embedded demo data"),
])
def test_config_mistakes_are_named(field, value, message):
  with pytest.raises(ConfigError, match=message):
    experiment.validate(config_with(CONFIG, field, value))


def test_bad_inputs_end_with_one_error_line(tmp_path):
  csv = tmp_path / "labels.csv"
  csv.write_text("path,finding\nmissing.png,1\n")
  proc = run_train(tmp_path / "bad", f"--config.data.user=('mine={csv}',)",
                   "--config.transfer.targets=('mine',)", config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "missing.png" in last and "is missing" in last, last


def test_published_weights_become_an_initialisation_row(tmp_path):
  """A torchvision-layout ViT state dict named in transfer.weights: the classifier starts
  from exactly its tensors (the head kept from the model when the class count differs), and
  the row carries its name; a missing file or a bad entry is named in one line."""
  from test_convert import _torchvision_vit
  c = config_with(CONFIG, "backbones", ("vit",))
  study = experiment.Study(c, tmp_path, "vit")
  net = study.classifier(3)
  source = jax.device_get(study.transfer_init(net, experiment.SCRATCH, None, seed=5))
  state_dict = _torchvision_vit(flax.core.unfreeze(source), c.model.vit.depth)
  state_dict = {k: v for k, v in state_dict.items() if not k.startswith("heads")}
  np.savez(tmp_path / "vit.npz", **state_dict)
  c.transfer.weights = (f"vit:supervised (published)={tmp_path / 'vit.npz'}",)
  experiment.validate(c)
  assert experiment.inits(c, "vit")[-1] == "supervised (published)"
  assert "published weights: supervised (published) (vit, vit.npz)" in experiment.data_label(c)
  study = experiment.Study(c, tmp_path, "vit")
  got = study.transfer_init(net, "supervised (published)", None, seed=0)
  fresh = study.transfer_init(net, experiment.SCRATCH, None, seed=0)
  flat = lambda t: flax.traverse_util.flatten_dict(t, sep="/")  # noqa: E731
  for path, value in flat(got).items():
    want = flat(fresh if path.startswith("head/") else source)[path]
    np.testing.assert_array_equal(value, want, err_msg=path)
  for entries, message in (((f"vit:x={tmp_path / 'none.npz'}",), "is not a file"),
                           (("x=/w.npz",), "must be 'backbone:name=path'"),
                           (("resnet:x=/w.npz",), "unknown backbone")):
    with pytest.raises(ConfigError, match=message):
      experiment.validate(config_with(CONFIG, "transfer.weights", entries))
