"""The WGAN augmentation's paper settings: torch's RMSprop, ImageNet weights from a file,
the Table 1 / Table 6 data settings (Poland as the source, no source test set, mirrored
sets) and the per-epoch checkpoint selection, each against a plain computation."""

from __future__ import annotations

import csv
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from medda_jax.config_utils import load_config
from medda_jax.data.images import ImageSet
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods import wgan_aug
from medda_jax.models.cnn_transformer import build_classifier


# --------------------------------------------------------------------------- RMSprop
def _torch_rmsprop_by_hand(params, grads_per_step, lr, alpha=0.99, eps=1e-8):
  """torch.optim.RMSprop.step written out (torch/optim/rmsprop.py, no momentum, not
  centred): square_avg = alpha * square_avg + (1 - alpha) * g * g;
  param -= lr * g / (sqrt(square_avg) + eps); square_avg starts at 0."""
  p = np.array(params, np.float64)
  v = np.zeros_like(p)
  for g in grads_per_step:
    for i in range(len(p)):
      v[i] = alpha * v[i] + (1 - alpha) * g[i] * g[i]
      p[i] = p[i] - lr * g[i] / (np.sqrt(v[i]) + eps)
  return p


def test_gan_rmsprop_is_torchs_with_eps_outside_the_root():
  rng = np.random.default_rng(0)
  # Gradients of 1e-9..1e-7: sqrt(v) is then near eps = 1e-8, where eps inside or outside
  # the root differ by orders of magnitude.
  grads = [rng.normal(size=5) * 10.0 ** rng.uniform(-9, -7, size=5) for _ in range(6)]
  start = rng.normal(size=5) * 0.01
  config = load_config("configs/wgan_synth.py")  # the paper setting: RMSprop 5e-5
  tx = wgan_aug.gan_optimizer(config.gan)
  params = jnp.asarray(start, jnp.float32)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  want = _torch_rmsprop_by_hand(start, grads, lr=5e-5)
  assert np.max(np.abs(want - start)) > 1e-5  # the steps are far above float32 rounding
  np.testing.assert_allclose(np.asarray(params), want, rtol=1e-5, atol=1e-9)

  torch = pytest.importorskip("torch")  # and against torch itself where it is installed
  p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
  opt = torch.optim.RMSprop([p], lr=5e-5)
  for g in grads:
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
  np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12)


# --------------------------------------------------------------------------- ImageNet weights
def _resnet_state_dict(width: int, rng, classes: int = 1000) -> dict[str, np.ndarray]:
  """A torchvision resnet state dict with one bottleneck per stage (names and OIHW shapes
  as torchvision writes them), random values."""
  state = {}

  def conv(name, out, inp, k):
    state[f"{name}.weight"] = rng.normal(size=(out, inp, k, k)).astype(np.float32)

  def bn(name, n):
    for part in ("weight", "bias", "running_mean"):
      state[f"{name}.{part}"] = rng.normal(size=n).astype(np.float32)
    state[f"{name}.running_var"] = rng.uniform(0.5, 2, size=n).astype(np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inp = width
  for stage in range(4):
    w = width * 2 ** stage
    block = f"layer{stage + 1}.0"
    conv(f"{block}.conv1", w, inp, 1), bn(f"{block}.bn1", w)
    conv(f"{block}.conv2", w, w, 3), bn(f"{block}.bn2", w)
    conv(f"{block}.conv3", 4 * w, w, 1), bn(f"{block}.bn3", 4 * w)
    conv(f"{block}.downsample.0", 4 * w, inp, 1), bn(f"{block}.downsample.1", 4 * w)
    inp = 4 * w
  state["fc.weight"] = rng.normal(size=(classes, inp)).astype(np.float32)
  state["fc.bias"] = rng.normal(size=classes).astype(np.float32)
  return state


@functools.cache  # one initialisation for the tests that read it
def _tiny_resnet():
  model = build_classifier("resnet50", width=4, stage_sizes=(1, 1, 1, 1))
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 16, 16, 1)), train=False))
  return model, init(jax.random.key(0))  # jitted: op-by-op initialisation is slower


@pytest.mark.parametrize("suffix", [".npz", ".pth"])
def test_resnet_backbone_loads_from_a_torchvision_state_dict(tmp_path, suffix):
  state = _resnet_state_dict(4, np.random.default_rng(0))
  path = tmp_path / f"resnet50{suffix}"
  if suffix == ".npz":
    np.savez(path, **state)
  else:
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  _, fresh = _tiny_resnet()
  loaded = wgan_aug.load_pretrained("resnet50", path, fresh, "config.pretrained.resnet50")
  p, s = loaded["params"], loaded["batch_stats"]
  # conv OIHW -> HWIO: kernel[ky, kx, i, o] = weight[o, i, ky, kx]
  w = state["layer3.0.conv2.weight"]
  assert float(p["layer3"]["0"]["conv2"]["kernel"][1, 2, 3, 5]) == w[5, 3, 1, 2]
  np.testing.assert_array_equal(p["layer2"]["0"]["downsample"]["0"]["kernel"][0, 0],
                                state["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(p["bn1"]["scale"], state["bn1.weight"])
  np.testing.assert_array_equal(s["layer4"]["0"]["bn3"]["var"], state["layer4.0.bn3.running_var"])
  # the 1000-class ImageNet head is not loaded: the 2-class head stays as initialised
  np.testing.assert_array_equal(p["fc"]["kernel"], fresh["params"]["fc"]["kernel"])


def test_weights_of_another_architecture_give_one_line_naming_the_field(tmp_path):
  path = tmp_path / "wide.npz"
  np.savez(path, **_resnet_state_dict(8, np.random.default_rng(0)))  # width 8, model 4
  _, fresh = _tiny_resnet()
  with pytest.raises(DataError) as err:
    wgan_aug.load_pretrained("resnet50", path, fresh, "config.pretrained.resnet50")
  message = str(err.value)
  assert "\n" not in message and len(message) < 500
  assert message.startswith(f"config.pretrained.resnet50={str(path)!r} does not fit")
  assert "bn1.bias: file (8,) -> (8,) in Flax layout, model expects (4,)" in message
  assert "more)" in message
  with pytest.raises(DataError, match="does not exist"):
    wgan_aug.load_pretrained("resnet50", tmp_path / "none.npz", fresh, "f")
  (tmp_path / "w.txt").write_text("x")
  with pytest.raises(DataError, match=r"must be a \.npz or a torch\.save"):
    wgan_aug.read_state_dict(tmp_path / "w.txt")


VIT = dict(image_size=8, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16, dropout=0.1)


def _vit_state_dict(rng, classes=2, old_mlp_names=False) -> dict[str, np.ndarray]:
  """torchvision vit_b_16 names and shapes at the tiny VIT sizes, random values."""
  d, m, tokens = VIT["width"], VIT["mlp_dim"], (VIT["image_size"] // VIT["patch_size"]) ** 2 + 1
  r = lambda *shape: rng.normal(size=shape).astype(np.float32) * 0.5
  state = {"conv_proj.weight": r(d, 3, 4, 4), "conv_proj.bias": r(d), "class_token": r(1, 1, d),
           "encoder.pos_embedding": r(1, tokens, d), "encoder.ln.weight": 1 + r(d),
           "encoder.ln.bias": r(d), "heads.head.weight": r(classes, d),
           "heads.head.bias": r(classes)}
  lin1, lin2 = ("linear_1", "linear_2") if old_mlp_names else ("0", "3")
  for i in range(VIT["depth"]):
    layer = f"encoder.layers.encoder_layer_{i}"
    state.update({
        f"{layer}.ln_1.weight": 1 + r(d), f"{layer}.ln_1.bias": r(d),
        f"{layer}.self_attention.in_proj_weight": r(3 * d, d),
        f"{layer}.self_attention.in_proj_bias": r(3 * d),
        f"{layer}.self_attention.out_proj.weight": r(d, d),
        f"{layer}.self_attention.out_proj.bias": r(d),
        f"{layer}.ln_2.weight": 1 + r(d), f"{layer}.ln_2.bias": r(d),
        f"{layer}.mlp.{lin1}.weight": r(m, d), f"{layer}.mlp.{lin1}.bias": r(m),
        f"{layer}.mlp.{lin2}.weight": r(d, m), f"{layer}.mlp.{lin2}.bias": r(d)})
  return state


def _vit_forward_in_torch(state, images: np.ndarray) -> np.ndarray:
  """torchvision's VisionTransformer.forward (eval mode) written with torch functionals."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  t = {k: torch.from_numpy(v) for k, v in state.items()}
  d = VIT["width"]
  x = torch.from_numpy(np.repeat(images, 3, axis=-1)).permute(0, 3, 1, 2)  # NCHW, grey -> RGB
  x = F.conv2d(x, t["conv_proj.weight"], t["conv_proj.bias"], stride=VIT["patch_size"])
  x = x.reshape(x.shape[0], d, -1).permute(0, 2, 1)
  x = torch.cat([t["class_token"].expand(x.shape[0], -1, -1), x], dim=1)
  x = x + t["encoder.pos_embedding"]
  for i in range(VIT["depth"]):
    p = f"encoder.layers.encoder_layer_{i}."
    y = F.layer_norm(x, (d,), t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps=1e-6)
    y, _ = F.multi_head_attention_forward(
        y.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1), d, VIT["num_heads"],
        t[p + "self_attention.in_proj_weight"], t[p + "self_attention.in_proj_bias"],
        None, None, False, 0.0, t[p + "self_attention.out_proj.weight"],
        t[p + "self_attention.out_proj.bias"], training=False, need_weights=False)
    x = x + y.transpose(0, 1)
    y = F.layer_norm(x, (d,), t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps=1e-6)
    y = F.linear(F.gelu(F.linear(y, t[p + "mlp.0.weight"], t[p + "mlp.0.bias"])),
                 t[p + "mlp.3.weight"], t[p + "mlp.3.bias"])
    x = x + y
  x = F.layer_norm(x, (d,), t["encoder.ln.weight"], t["encoder.ln.bias"], eps=1e-6)
  return F.linear(x[:, 0], t["heads.head.weight"], t["heads.head.bias"]).numpy()


def test_vit_from_torchvision_names_computes_torchvisions_logits():
  state = _vit_state_dict(np.random.default_rng(1))
  model = build_classifier("vit_b16", **VIT)
  images = np.random.default_rng(2).random((3, 8, 8, 1)).astype(np.float32)
  fresh = model.init(jax.random.key(0), jnp.asarray(images), train=False)
  loaded = wgan_aug.load_torchvision_vit(state, fresh, skip_head=False)
  want = _vit_forward_in_torch(state, images)
  got = model.apply(loaded, jnp.asarray(images), train=False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  # older torchvision files name the MLP layers linear_1 / linear_2: same values
  old = wgan_aug.load_torchvision_vit(_vit_state_dict(np.random.default_rng(1),
                                                      old_mlp_names=True), fresh)
  jax.tree.map(np.testing.assert_array_equal, old["params"]["encoder"],
               loaded["params"]["encoder"])
  np.testing.assert_array_equal(old["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
  state.pop("encoder.ln.bias")
  with pytest.raises(ValueError, match="missing encoder.ln.bias"):
    wgan_aug.load_torchvision_vit(state, fresh)


def test_pretrained_fields_are_checked_before_training(tmp_path):
  config = load_config("configs/wgan_synth.py:smoke")
  with config.unlocked():
    config.pretrained.cnn_transformer = str(tmp_path / "x.npz")
  with pytest.raises(ConfigError, match="config.pretrained.cnn_transformer must be empty"):
    wgan_aug.validate(config)
  with config.unlocked():
    config.pretrained.cnn_transformer = ""
    config.pretrained.vit_b16 = str(tmp_path / "missing.pth")
  with pytest.raises(ConfigError, match="config.pretrained.vit_b16=.* is not a file"):
    wgan_aug.validate(config)


def test_imagenet_standardisation_is_torchvisions_normalize():
  grey = np.random.default_rng(0).random((2, 3, 3, 1)).astype(np.float32)
  got = np.asarray(wgan_aug.imagenet_standardise(jnp.asarray(grey)))
  for ch, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
    np.testing.assert_allclose(got[..., ch], (grey[..., 0] - mean) / std, rtol=1e-6)


# --------------------------------------------------------------------------- Table 1 / Table 6
def _png(path: pathlib.Path, value: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((6, 9), value, np.uint8)).save(path)


def _breast(root: pathlib.Path, classes: list[str]) -> pathlib.Path:
  """BrEaST in its TCIA layout: caseNNN.png (+ a mask each) and the clinical CSV; image i
  is filled with grey level i + 1, so an image names itself."""
  folder = root / "BrEaST-Lesions_USG-images_and_masks"
  rows = []
  for i, cls in enumerate(classes):
    _png(folder / f"case{i + 1:03d}.png", i + 1)
    _png(folder / f"case{i + 1:03d}_tumor.png", 255)
    rows.append({"Image_filename": f"case{i + 1:03d}.png", "Classification": cls})
  with open(root / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["Image_filename", "Classification"])
    writer.writeheader()
    writer.writerows(rows)
  return root


def _busi(root: pathlib.Path, counts: dict[str, int]) -> pathlib.Path:
  folder, value = root / "Dataset_BUSI_with_GT", 100
  for cls, n in counts.items():
    for i in range(n):
      value += 1
      _png(folder / cls / f"{cls} ({i + 1}).png", value)
      _png(folder / cls / f"{cls} ({i + 1})_mask.png", 0)
  return root


def _levels(data: ImageSet) -> list[int]:
  """The grey level each image was written with (its name, see `_breast` / `_busi`)."""
  return [int(round(float(v) * 255)) for v in data.images[:, 0, 0, 0]]


def _table_config(variant: str, tmp_path, breast_classes, busi_counts, **data):
  config = load_config(f"configs/wgan_synth.py:{variant}")
  with config.unlocked():
    config.data.size = 8
    breast = str(_breast(tmp_path / "breast", breast_classes))
    busi = str(_busi(tmp_path / "busi", busi_counts))
    if config.data.source == "breast":
      config.data.source_dir, config.data.target_dirs.busi = breast, busi
    else:
      config.data.source_dir, config.data.target_dirs.breast = busi, breast
    for k, v in data.items():
      config.data[k] = v
  wgan_aug.validate(config)
  return config


def test_poland_to_egypt_trains_on_breast_and_tests_on_all_of_busi(tmp_path):
  classes = ["benign"] * 11 + ["malignant"] * 8 + ["normal"]  # normal -> benign (label 1)
  config = _table_config("table1_poland", tmp_path, classes,
                         {"benign": 3, "normal": 1, "malignant": 2}, n_source_test=4)
  assert config.data.source == "breast" and config.data.targets == ("busi",)
  splits = wgan_aug.load_splits(config)
  test, train, val = (_levels(s) for s in (splits.source_test, splits.real_train,
                                             splits.real_val))
  assert len(test) == 4 and len(val) == 2 and len(train) == 14  # 80/20, val 10 % of 16
  assert sorted(test + train + val) == list(range(1, 21))  # every BrEaST image, once
  assert sorted(_levels(splits.gan_train)) == sorted(train + val)  # never the test images
  want_labels = {i + 1: int(c != "malignant") for i, c in enumerate(classes)}
  for part in (splits.source_test, splits.real_train, splits.real_val):
    assert [want_labels[v] for v in _levels(part)] == part.labels.tolist()
  busi = splits.targets["busi"]  # all of BUSI, malignant = 0
  assert sorted(_levels(busi)) == list(range(101, 107))
  assert sorted(zip(_levels(busi), busi.labels.tolist())) == [
      (101, 1), (102, 1), (103, 1), (104, 1), (105, 0), (106, 0)]


def test_table6_trains_on_every_source_image_without_a_source_test(tmp_path):
  config = _table_config("table6", tmp_path, ["benign"] * 3 + ["malignant"] * 2,
                         {"benign": 8, "normal": 2, "malignant": 10})
  assert config.data.n_source_test == 0 and config.synthetic.mirror_counts == (400,)
  splits = wgan_aug.load_splits(config)
  assert len(splits.source_test.labels) == 0
  assert len(splits.real_val.labels) == 2  # 10 % of 20
  assert sorted(_levels(splits.real_train) + _levels(splits.real_val)) == list(range(101, 121))
  assert sorted(_levels(splits.gan_train)) == list(range(101, 121))
  assert sorted(_levels(splits.targets["breast"])) == [1, 2, 3, 4, 5]


def test_the_mirrored_row_doubles_the_mixed_set_with_its_flips():
  images = np.random.default_rng(0).random((3, 2, 4, 1)).astype(np.float32)
  data = ImageSet(images, np.array([1, 0, 1], np.int32))
  out = wgan_aug.mirrored(data)
  assert out.labels.tolist() == [1, 0, 1, 1, 0, 1]
  np.testing.assert_array_equal(out.images[:3], images)
  for i in range(3):
    for x in range(4):
      np.testing.assert_array_equal(out.images[3 + i][:, x], images[i][:, 3 - x])
  config = load_config("configs/wgan_synth.py:table6")
  assert wgan_aug.row_ids(config) == ["0", "400", "400+flips"]
  assert wgan_aug.parse_row("400+flips") == (400, True)
  # Table 6's count: 780 real + 400 WGAN images, all flipped -> 1580 synthetic
  real = ImageSet(np.zeros((780, 1, 2, 1), np.float32),
                  np.r_[np.zeros(210), np.ones(570)].astype(np.int32))
  pool = {0: np.zeros((292, 1, 2, 1), np.float32), 1: np.ones((292, 1, 2, 1), np.float32)}
  mixed = wgan_aug.mirrored(wgan_aug.mixed_training_set(real, pool, 400, "proportional", 0))
  assert len(mixed.labels) - 780 == 1580
  assert np.bincount(mixed.labels).tolist() == [2 * (210 + 108), 2 * (570 + 292)]


# --------------------------------------------------------------------------- per-epoch selection
def test_each_epoch_is_one_permutation_and_ends_on_a_call():
  order = wgan_aug.epoch_order(10, epochs=3, batch_size=4, seed=0)
  assert order.shape == (9, 4)  # ceil(10 / 4) = 3 steps per epoch
  for e in range(3):
    epoch = order[3 * e:3 * e + 3].reshape(-1)
    assert sorted(epoch[:10]) == list(range(10))  # every image once ...
    assert list(epoch[10:]) == list(epoch[:2])  # ... and the last batch filled up
  assert [wgan_aug.call_length(s, 4) for s in (4, 5, 6, 7, 8, 2)] == [4, 1, 3, 1, 4, 2]


def test_table_setting_runs_without_gans_or_source_test_and_selects_per_epoch(tmp_path):
  """Table 6's shape at toy scale, in process: no synthetic images (so no GAN is trained),
  no source test set, a mirrored row; every run evaluated once per epoch."""
  import json
  rng = np.random.default_rng(0)
  for domain, n in (("source", 12), ("target", 5)):
    for cls in ("a", "b"):
      for i in range(n):
        path = tmp_path / domain / cls / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
  config = load_config("configs/wgan_synth.py:smoke")
  with config.unlocked():
    config.data.source = f"here={tmp_path / 'source'}"
    config.data.targets = (f"there={tmp_path / 'target'}",)
    config.classifiers = ("vit_b16",)  # the quickest of the three to compile
    config.synthetic.counts = (0,)
    config.synthetic.mirror_counts = (0,)
    config.data.n_source_test = 0
    config.data.n_real_train = 0  # all 24 source images (val share held back)
    config.data.n_target_test = 0  # all 10 target images
    config.train.epochs = 3
  workdir = tmp_path / "run"
  final = wgan_aug.train_and_evaluate(config, workdir)
  assert not (workdir / "synthetic.npz").exists()
  assert not list((workdir / "checkpoints").glob("wgan*"))
  runs = json.loads((workdir / "wgan_results.json").read_text())
  assert sorted(runs) == ["vit_b16/0+flips/0", "vit_b16/0/0"]
  splits = wgan_aug.load_splits(config)
  n_real = len(splits.real_train.labels)
  assert n_real == 24 - 2 and len(splits.targets["there"].labels) == 10
  assert runs["vit_b16/0/0"]["train_images"] == n_real
  assert runs["vit_b16/0+flips/0"]["train_images"] == 2 * n_real
  for key, run in runs.items():
    assert run["source"] is None and "source_predictions" not in run
    assert run["evaluations"] == config.train.epochs  # once per epoch, not per call
    for t, data in splits.targets.items():  # the reported accuracy, recomputed
      predictions = np.asarray(run["target_predictions"][t])
      assert run["targets"][t] == pytest.approx(100 * np.mean(predictions == data.labels))
      assert final[f"{t}_acc/vit_b16/{key.split('/')[1]}"] == pytest.approx(run["targets"][t])
  assert not any(k.startswith(("source_acc", "gap")) for k in final)
  table = json.loads((workdir / "results.json").read_text())["table"]["vit_b16"]
  assert table["0"]["source"] == [None, None] and table["0+flips"]["synthetic"] == n_real
  md = (workdir / "results.md").read_text()
  assert "| real only, all flipped |" in md and "| — |" in md
