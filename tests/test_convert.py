"""models/convert.py: PyTorch state dicts (torchvision ViT, timm / SimMIM Swin) to Flax params.

No torch here: the torch-layout state dicts are written out below from random Flax params
by a plain write-up of torchvision's and timm's naming, and the layout conventions are
checked numerically against plain numpy written on the state-dict arrays as torch computes
with them."""

from __future__ import annotations

import functools
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from medda_jax.engine.graft import graft
from medda_jax.errors import ConfigError, DataError
from medda_jax.models import convert, swin, vit

VIT = dict(image_size=32, patch_size=16, width=16, depth=2, num_heads=2, mlp_dim=32,
           dropout=0.0, num_classes=3)


def _shapes(model, size, mask=False, **kw):
  """`model.init(...)["params"]` as ShapeDtypeStructs (nothing compiled)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  if not mask:
    init = functools.partial(model.init, train=False, **kw)
    return jax.eval_shape(init, jax.random.key(0), x)["params"]
  g = size // model.patch_size
  m = jax.ShapeDtypeStruct((1, g, g), jnp.bool_)
  init = lambda key, x, m: model.init(key, x, train=False, mask=m, **kw)
  return jax.eval_shape(init, jax.random.key(0), x, m)["params"]


def _random(tree, seed=0, std=0.3):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (std * rng.normal(size=s.shape)).astype(np.float32), tree)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _assert_same_tree(got, want):
  got, want = _flat(got), _flat(want)
  assert sorted(got) == sorted(want)
  for path in want:
    assert got[path].dtype == np.float32, path
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)


# --------------------------------------------------------------------------- torch layouts
def _torchvision_vit(p, depth, mlp=("0", "3")):
  """torchvision VisionTransformer's state dict from the Flax params `p`."""
  sd = {"class_token": p["class_token"],
        "conv_proj.weight": np.transpose(p["conv_proj"]["kernel"], (3, 2, 0, 1)),
        "conv_proj.bias": p["conv_proj"]["bias"],
        "encoder.pos_embedding": p["encoder"]["pos_embedding"],
        "encoder.ln.weight": p["encoder"]["ln"]["scale"],
        "encoder.ln.bias": p["encoder"]["ln"]["bias"],
        "heads.head.weight": np.transpose(p["head"]["kernel"]),
        "heads.head.bias": p["head"]["bias"]}
  for i in range(depth):
    block = p["encoder"][f"encoder_layer_{i}"]
    t = f"encoder.layers.encoder_layer_{i}."
    for ln in ("ln_1", "ln_2"):
      sd[t + ln + ".weight"] = block[ln]["scale"]
      sd[t + ln + ".bias"] = block[ln]["bias"]
    attn = block["self_attention"]
    width = attn["query"]["kernel"].shape[0]
    rows, biases = [], []
    for name in ("query", "key", "value"):  # in_proj_weight = [W_q; W_k; W_v], each (out, in)
      rows.append(np.transpose(attn[name]["kernel"].reshape(width, width)))
      biases.append(attn[name]["bias"].reshape(width))
    sd[t + "self_attention.in_proj_weight"] = np.concatenate(rows, axis=0)
    sd[t + "self_attention.in_proj_bias"] = np.concatenate(biases, axis=0)
    sd[t + "self_attention.out_proj.weight"] = np.transpose(
        attn["out"]["kernel"].reshape(width, width))
    sd[t + "self_attention.out_proj.bias"] = attn["out"]["bias"]
    for name, index in zip(("linear_1", "linear_2"), mlp):
      sd[f"{t}mlp.{index}.weight"] = np.transpose(block["mlp"][name]["kernel"])
      sd[f"{t}mlp.{index}.bias"] = block["mlp"][name]["bias"]
  return sd


def _relative_position_index(w):
  """timm's / the official Swin's index, one token pair at a time."""
  index = np.zeros((w * w, w * w), np.int64)
  for a in range(w * w):
    for b in range(w * w):
      (ya, xa), (yb, xb) = divmod(a, w), divmod(b, w)
      index[a, b] = (ya - yb + w - 1) * (2 * w - 1) + (xa - xb + w - 1)
  return index


def _timm_swin(p, depths, merging_ends_stage, head=True):
  """timm SwinTransformer's state dict from the Flax params `p`: patch merging as
  `layers.{i}.downsample` (official, SimMIM, timm < 0.9; head `head`) or
  `layers.{i+1}.downsample` (timm >= 0.9; head `head.fc`), with the buffers."""
  sd = {"patch_embed.proj.weight": np.transpose(p["patch_embed"]["proj"]["kernel"], (3, 2, 0, 1)),
        "patch_embed.proj.bias": p["patch_embed"]["proj"]["bias"],
        "patch_embed.norm.weight": p["patch_embed"]["norm"]["scale"],
        "patch_embed.norm.bias": p["patch_embed"]["norm"]["bias"],
        "norm.weight": p["norm"]["scale"], "norm.bias": p["norm"]["bias"]}
  for i, depth in enumerate(depths):
    layer = p[f"layers_{i}"]
    for j in range(depth):
      block, t = layer[f"blocks_{j}"], f"layers.{i}.blocks.{j}."
      for norm in ("norm1", "norm2"):
        sd[t + norm + ".weight"] = block[norm]["scale"]
        sd[t + norm + ".bias"] = block[norm]["bias"]
      for module, name in (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2")):
        sd[f"{t}{module}.{name}.weight"] = np.transpose(block[module][name]["kernel"])
        sd[f"{t}{module}.{name}.bias"] = block[module][name]["bias"]
      table = block["attn"]["relative_position_bias_table"]
      sd[t + "attn.relative_position_bias_table"] = table
      w = (int(round(np.sqrt(table.shape[0]))) + 1) // 2
      sd[t + "attn.relative_position_index"] = _relative_position_index(w)
      if j % 2:
        sd[t + "attn_mask"] = np.zeros((4, w * w, w * w), np.float32)
    if "downsample" in layer:
      d = f"layers.{i if merging_ends_stage else i + 1}.downsample."
      sd[d + "norm.weight"] = layer["downsample"]["norm"]["scale"]
      sd[d + "norm.bias"] = layer["downsample"]["norm"]["bias"]
      sd[d + "reduction.weight"] = np.transpose(layer["downsample"]["reduction"]["kernel"])
  if head:
    h = "head." if merging_ends_stage else "head.fc."
    sd[h + "weight"] = np.transpose(p["head"]["kernel"])
    sd[h + "bias"] = p["head"]["bias"]
  return sd


@functools.lru_cache(maxsize=None)
def _vit_like():
  return _shapes(vit.VisionTransformer(**VIT), 32)


@functools.lru_cache(maxsize=None)
def _swin_like():
  return _shapes(swin.swin_tiny_test(), 32)


def _vit_case(seed=0):
  p = _random(_vit_like(), seed)
  return p, _torchvision_vit(p, VIT["depth"])


def _swin_case(merging_ends_stage=True, seed=1):
  p = _random(_swin_like(), seed)
  return p, _timm_swin(p, (2, 2), merging_ends_stage)


# --------------------------------------------------------------------------- 1. round trips
@pytest.mark.parametrize("mlp", [("0", "3"), ("linear_1", "linear_2")])
def test_vit_every_leaf_comes_back_exactly(mlp):
  p = _random(_vit_like())
  params, notes = convert.vit_params_from_torchvision(_torchvision_vit(p, 2, mlp), _vit_like())
  _assert_same_tree(params, p)
  assert notes == ["head/bias: copied from heads.head.bias",
                   "head/kernel: copied from heads.head.weight"]


@pytest.mark.parametrize("merging_ends_stage", [True, False])
def test_swin_every_leaf_comes_back_exactly_in_both_merging_layouts(merging_ends_stage):
  p, sd = _swin_case(merging_ends_stage)
  assert ("layers.0.downsample.reduction.weight" in sd) == merging_ends_stage
  assert ("layers.1.downsample.reduction.weight" in sd) != merging_ends_stage
  params, notes = convert.swin_params_from_timm(sd, _swin_like())
  _assert_same_tree(params, p)
  assert ("timm >= 0.9" in notes[0]) != merging_ends_stage
  head = "head" if merging_ends_stage else "head.fc"
  assert notes[1:] == [f"head/bias: copied from {head}.bias",
                       f"head/kernel: copied from {head}.weight"]


def test_another_class_count_keeps_the_models_head_and_grafts_into_an_init():
  p, sd = _vit_case()
  sd["heads.head.weight"] = np.ones((1000, 16), np.float32)
  sd["heads.head.bias"] = np.ones((1000,), np.float32)
  init = _random(_vit_like(), seed=5)
  params, notes = convert.vit_params_from_torchvision(sd, {"params": init})
  assert set(params) == {"params"}
  want = dict(p, head=init["head"])
  _assert_same_tree(params["params"], want)
  assert notes == ["head/bias: heads.head.bias has shape (1000,), the model needs (3,); kept "
                   "as in `like`",
                   "head/kernel: heads.head.weight has shape (1000, 16), the model needs "
                   "(3, 16); kept as in `like`"]
  # abstract `like`: the head is left out, and graft fills it from an initialised model
  params, notes = convert.vit_params_from_torchvision(sd, _vit_like())
  assert "head" not in params and all("left out" in n for n in notes)
  grafted, paths = graft(init, params)
  _assert_same_tree(grafted, want)
  assert len(paths) == len(_flat(p)) - 2


def test_simmim_swin_encoder_with_mask_token_and_decoder():
  model = swin.swin_tiny_test()
  like = _shapes(model, 32, mask=True, return_features=True)  # SimMIM's encoder: no head
  p = _random(like, seed=2)
  sd = {f"encoder.{k}": v for k, v in _timm_swin(p, (2, 2), True, head=False).items()}
  sd["encoder.mask_token"] = p["mask_token"]
  sd["decoder.0.weight"] = np.zeros((16 * 32, 32, 1, 1), np.float32)
  sd["decoder.0.bias"] = np.zeros((16 * 32,), np.float32)
  params, notes = convert.swin_params_from_timm({"model": sd}, like)
  _assert_same_tree(params, p)
  assert notes[1:] == []
  # a classifier fine-tuned from it: no mask token in the model, a head it keeps
  target = _random(_swin_like(), seed=3)
  params, notes = convert.swin_params_from_timm({"model": sd}, target)
  _assert_same_tree(params, dict({k: v for k, v in p.items() if k != "mask_token"},
                                 head=target["head"]))
  assert notes[1:] == ["head/bias: head.bias is not in the weights; kept as in `like`",
                       "head/kernel: head.weight is not in the weights; kept as in `like`",
                       "mask_token (1, 1, 16): not a parameter of the model, skipped"]


# --------------------------------------------------------------------------- 2. numerics
def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _heads(t, n):  # [B, L, n * d] -> [B, n, L, d]
  b, length, c = t.shape
  return t.reshape(b, length, n, c // n).transpose(0, 2, 1, 3)


def _torchvision_block(x, sd, t, heads):
  """torchvision EncoderBlock in numpy: nn.MultiheadAttention with the fused in_proj."""
  g = lambda k: sd[t + k].astype(np.float64)
  h = _layer_norm(x, g("ln_1.weight"), g("ln_1.bias"), 1e-6)
  q, k, v = np.split(h @ g("self_attention.in_proj_weight").T + g("self_attention.in_proj_bias"),
                     3, axis=-1)
  q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
  a = _softmax(q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]))
  o = (a @ v).transpose(0, 2, 1, 3).reshape(x.shape)
  x = x + o @ g("self_attention.out_proj.weight").T + g("self_attention.out_proj.bias")
  h = _layer_norm(x, g("ln_2.weight"), g("ln_2.bias"), 1e-6)
  h = h @ g("mlp.0.weight").T + g("mlp.0.bias")
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return x + h @ g("mlp.3.weight").T + g("mlp.3.bias")


def _timm_window_attention(x, sd, t, heads):
  """timm WindowAttention in numpy: fused qkv (3C, C), relative position bias, no mask."""
  g = lambda k: sd[t + k].astype(np.float64)
  b, n, c = x.shape
  qkv = (x @ g("qkv.weight").T + g("qkv.bias")).reshape(b, n, 3, heads, c // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)
  a = q * (c // heads) ** -0.5 @ k.swapaxes(-1, -2)
  index = sd[t + "relative_position_index"].reshape(-1)
  a = a + g("relative_position_bias_table")[index].reshape(n, n, heads).transpose(2, 0, 1)
  o = (_softmax(a) @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return o @ g("proj.weight").T + g("proj.bias")


def test_vit_block_from_converted_params_computes_torchvisions_block():
  _, sd = _vit_case(seed=4)
  params, _ = convert.vit_params_from_torchvision(sd, _vit_like())
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  block = vit.EncoderBlock(num_heads=2, mlp_dim=32)
  got = block.apply({"params": params["encoder"]["encoder_layer_1"]}, jnp.asarray(x))
  want = _torchvision_block(x.astype(np.float64), sd, "encoder.layers.encoder_layer_1.", 2)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_swin_window_attention_from_converted_params_computes_timms():
  _, sd = _swin_case(merging_ends_stage=False, seed=6)
  params, _ = convert.swin_params_from_timm(sd, _swin_like())
  x = np.random.default_rng(1).normal(size=(3, 16, 32)).astype(np.float32)
  attn = swin.WindowAttention(num_heads=2, window_size=4)
  got = attn.apply({"params": params["layers_1"]["blocks_0"]["attn"]}, jnp.asarray(x))
  want = _timm_window_attention(x.astype(np.float64), sd, "layers.1.blocks.0.attn.", 2)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- 3. errors
def _one_line_error(match, fn, *args, error=DataError):
  with pytest.raises(error, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)


def test_mapping_errors_name_the_tensor_and_both_shapes():
  _, sd = _vit_case()
  missing = dict(sd)
  del missing["encoder.layers.encoder_layer_1.ln_2.bias"]
  _one_line_error(r"has no tensor encoder\.layers\.encoder_layer_1\.ln_2\.bias \(for the "
                  r"model's encoder/encoder_layer_1/ln_2/bias, shape \(16,\)\)",
                  convert.vit_params_from_torchvision, missing, _vit_like())
  wrong = dict(sd, **{"conv_proj.weight": np.zeros((16, 3, 8, 8), np.float32)})
  _one_line_error(r"tensor conv_proj\.weight has shape \(16, 3, 8, 8\), the model's "
                  r"conv_proj/kernel \(16, 16, 3, 16\) needs \(16, 3, 16, 16\)",
                  convert.vit_params_from_torchvision, wrong, _vit_like())
  wrong = dict(sd, **{"encoder.pos_embedding": np.zeros((1, 17, 16), np.float32)})
  _one_line_error(r"encoder\.pos_embedding has shape \(1, 17, 16\).*needs \(1, 5, 16\) "
                  r"\(the model is built for another number of patches",
                  convert.vit_params_from_torchvision, wrong, _vit_like())
  extra = dict(sd, **{"encoder.layers.encoder_layer_2.ln_1.weight": np.ones(16, np.float32)})
  _one_line_error(r"has tensor encoder\.layers\.encoder_layer_2\.ln_1\.weight \(16,\), which "
                  "the model has no parameter for", convert.vit_params_from_torchvision, extra,
                  _vit_like())
  _, swin_sd = _swin_case()
  _one_line_error(r"the state dict holds none of the tensors of the torchvision ViT layout "
                  r"\(it has head\.bias, head\.weight, layers\.0\.blocks\.0\.attn\.proj\.bias, "
                  r"\.\.\.\): are these torchvision ViT weights\?",
                  convert.vit_params_from_torchvision, swin_sd, _vit_like())
  table = "layers.0.blocks.0.attn.relative_position_bias_table"
  wrong = dict(swin_sd, **{table: np.zeros((169, 1), np.float32)})
  _one_line_error(rf"tensor {table} has shape \(169, 1\), the model's layers_0/blocks_0/attn/"
                  r"relative_position_bias_table \(49, 1\) needs \(49, 1\) \(another window",
                  convert.swin_params_from_timm, wrong, _swin_like())


def test_file_errors(tmp_path, monkeypatch):
  text = tmp_path / "weights.txt"
  text.write_text("not weights")
  _one_line_error(r"weights\.txt: unknown format '\.txt'; give a \.npz", convert.read_state_dict,
                  text)
  _one_line_error("no such file", convert.read_state_dict, tmp_path / "absent.npz")
  pth = tmp_path / "vit_b_16.pth"
  pth.write_bytes(b"\x80\x02}q\x00.")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
  _one_line_error(r"vit_b_16\.pth needs torch, which is not installed; convert it to \.npz "
                  r"where torch is and pass that: python -c .*np\.savez\('weights\.npz'",
                  convert.read_state_dict, pth)
  _one_line_error("for the models \\['swin', 'vit'\\], not 'resnet'", convert.load_pretrained,
                  pth, "resnet", _vit_like(), error=ConfigError)
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"garbage")
  _one_line_error(r"bad\.npz cannot be read as a numpy \.npz file", convert.read_state_dict, bad)


# --------------------------------------------------------------------------- 4. reading
def test_read_state_dict_npz_round_trip_and_unwrapping(tmp_path):
  _, sd = _swin_case()
  path = tmp_path / "swin.npz"
  np.savez(path, **{f"module.{k}": v for k, v in sd.items()})  # a DDP state dict
  got = convert.read_state_dict(path)
  assert sorted(got) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])
    assert got[k].dtype == sd[k].dtype
  nested = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
  assert sorted(convert.read_state_dict(nested)) == sorted(sd)
  assert sorted(convert.read_state_dict({"state_dict": sd})) == sorted(sd)
  simmim = {"model": {"encoder.layers.0.x": np.ones(2), "decoder.0.weight": np.ones(3)},
            "config": "a pickled CfgNode in the real file"}
  assert list(convert.read_state_dict(simmim)) == ["layers.0.x"]
  # torchvision's ViT has keys under "encoder." and others: nothing is stripped
  _, vit_sd = _vit_case()
  assert sorted(convert.read_state_dict(vit_sd)) == sorted(vit_sd)
  _one_line_error(r"entry 'epoch' is a int, not a tensor", convert.read_state_dict,
                  {"epoch": 3, "w": np.ones(2)})
  # and through load_pretrained (the layout of the official Swin and timm < 0.9)
  params, notes = convert.load_pretrained(path, "swin", _swin_like())
  _assert_same_tree(params, _swin_case()[0])
  assert "timm < 0.9" in notes[0]


def test_read_state_dict_safetensors(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  p, sd = _vit_case()
  st.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "v.safetensors"))
  params, _ = convert.load_pretrained(tmp_path / "v.safetensors", "vit", _vit_like())
  _assert_same_tree(params, p)


def test_real_torchvision_vit_and_timm_swin_give_the_same_outputs():
  """With the torch peers installed (the `torch-peers` extra, timm too): random torchvision /
  timm models converted into the Flax ones compute the same logits."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2))
  tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                            num_heads=2, hidden_dim=16, mlp_dim=32,
                                            num_classes=3).eval()
  with torch.no_grad():  # torchvision's head starts at zero, which would hide everything
    tv.heads.head.weight.normal_()
    tv.heads.head.bias.normal_()
  tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                         patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                         window_size=4, num_classes=3).eval()
  with torch.no_grad():  # timm's head starts at std 0.02: logits of O(1) show more
    tm.head.fc.weight.normal_()
  flax_vit = vit.VisionTransformer(image_size=32, patch_size=8, width=16, depth=2,
                                       num_heads=2, mlp_dim=32, dropout=0.0, num_classes=3)
  flax_swin = swin.SwinTransformer(image_size=32, patch_size=4, embed_dim=16,
                                       depths=(2, 2), num_heads=(1, 2), window_size=4,
                                       drop_path_rate=0.0, num_classes=3)
  for torch_model, flax_model, fn in ((tv, flax_vit, convert.vit_params_from_torchvision),
                                      (tm, flax_swin, convert.swin_params_from_timm)):
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    like = flax_model.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    params, _ = fn(sd, like)
    want = torch_model(tx).detach().numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(np.asarray(flax_model.apply({"params": params}, jnp.asarray(x))),
                               want, atol=1e-5, rtol=1e-5)
