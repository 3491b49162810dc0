"""Pre-trained PyTorch weights for the Flax ViT (`vit.py`) and Swin (`swin.py`).

A user with torchvision's `vit_b_16` weights, timm's `swin_base_patch4_window7_224` weights
(either timm layout) or the encoder of a SimMIM Swin checkpoint starts from them:

  like = jax.eval_shape(model.init, jax.random.key(0), x)   # or a real model.init(...)
  params, notes = load_pretrained("swin_base.safetensors", "swin", like)

`read_state_dict` reads the file into numpy arrays: `.npz` (numpy), `.safetensors` (with the
`safetensors` package's numpy loader) and PyTorch `.pth` / `.pt` / `.bin` (only where torch
is installed; `torch.load(map_location="cpu", weights_only=True)`). A checkpoint that nests
its state dict under "model" or "state_dict" (SimMIM, timm, torchvision's references) is
unwrapped, a DistributedDataParallel "module." prefix is stripped, and a SimMIM checkpoint
(every key under "encoder." or "decoder.") becomes its encoder, the decoder dropped.

`vit_params_from_torchvision` and `swin_params_from_timm` map every parameter of `like` (the
target Flax params tree, with or without its top-level "params" key) to the tensor of the
same role by name and reshape / transpose it to the Flax layout: Linear weights (out, in)
transposed to Dense kernels (in, out); conv weights (out, in, kh, kw) to (kh, kw, in, out);
LayerNorm weight / bias to scale / bias; torch's fused attention `in_proj_weight` (3D, D)
split into Flax's `query` / `key` / `value` kernels (D, heads, head_dim) and `out_proj.weight`
(D, D) into the `out` kernel (heads, head_dim, D); timm's fused `qkv` (3C, C) is Swin's `qkv`
kernel transposed (the same (3, heads, head_dim) order of the outputs). The patch merging of
the official Swin, SimMIM and timm < 0.9 (`layers.{i}.downsample` ending stage i) and of
timm >= 0.9 (`layers.{i+1}.downsample` starting stage i + 1) are both read; the layout is told
by `layers.0.downsample.reduction.weight`, as timm's own loader does. torchvision's MLP is
read as `mlp.0` / `mlp.3` or its older `mlp.linear_1` / `mlp.linear_2`; timm's classifier
as `head.fc` (>= 0.9) or `head`.

Every converted tensor is checked against `like`'s shape, and its dtype becomes `like`'s. A
missing tensor, a tensor the model has no parameter for, or a shape that does not fit ends
in one `DataError` line naming the tensor and both shapes. Ignored: buffers
(`relative_position_index`, `attn_mask`). Reported in the returned notes instead: the
classifier head, copied when its shape fits and otherwise kept as in `like` (another class
count), a head of the weights that the model has not (a feature extractor), and a
`mask_token` that only one side has (SimMIM pre-training). Where `like` is abstract
(`jax.ShapeDtypeStruct` leaves) such kept leaves have no value and are left out of the
result: graft it into an initialised model (`engine.graft.graft(init_params, params)`).

The result is a plain tree of numpy arrays in `like`'s structure: the model's params, what
`graft` takes as its source, or what a checkpoint saves. SimMIM's own ViT (BEiT-style, not
torchvision's layout) is not read; nor is a position embedding or relative-position table
of another image or window size resized (the error says which).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import numpy as np

from medda_jax.errors import ConfigError, DataError

# The one-line recipe for a file this environment cannot read: a .npz of the state dict.
_TO_NPZ = ("python -c \"import numpy as np, torch; sd = torch.load('{path}', map_location='cpu', "
           "weights_only=False); sd = sd.get('model', sd.get('state_dict', sd)); "
           "np.savez('weights.npz', **{{k: v.float().numpy() for k, v in sd.items()}})\"")
_BUFFERS = ("relative_position_index", "attn_mask", "num_batches_tracked")


# --------------------------------------------------------------------------- reading
def read_state_dict(source) -> dict[str, np.ndarray]:
  """The state dict in `source` as {name: numpy array}.

  Args:
    source: a `.npz`, `.safetensors`, `.pth`, `.pt` or `.bin` file, or a mapping already
      in memory (a torch state dict or checkpoint dict; tensors become numpy arrays).

  Returns:
    the state dict, unwrapped from a "model" / "state_dict" key, without a "module." prefix,
    and for a SimMIM checkpoint (keys under "encoder." and "decoder.") the encoder only.
  """
  if isinstance(source, Mapping):
    return _unwrap(source, "the state dict")
  path = pathlib.Path(source)
  if not path.is_file():
    raise DataError(f"pre-trained weights {path}: no such file")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        obj = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever the error
      raise DataError(f"{path} cannot be read as a numpy .npz file ({_reason(e)})") from e
  elif suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise DataError(f"reading {path} needs the safetensors package (pip install "
                      f"safetensors); or convert it to .npz where torch is: "
                      f"{_TO_NPZ.format(path=path)}") from e
    try:
      obj = load_file(str(path))
    except Exception as e:  # noqa: BLE001
      raise DataError(f"{path} cannot be read as .safetensors ({_reason(e)})") from e
  elif suffix in (".pth", ".pt", ".bin"):
    obj = _torch_load(path)
  else:
    raise DataError(f"pre-trained weights {path}: unknown format {suffix or '(no suffix)'!r}; "
                    "give a .npz (numpy), .safetensors or PyTorch .pth / .pt / .bin file")
  return _unwrap(obj, str(path))


def _torch_load(path: pathlib.Path):
  try:
    import torch
  except ImportError as e:
    raise DataError(f"reading {path} needs torch, which is not installed; convert it to .npz "
                    f"where torch is and pass that: {_TO_NPZ.format(path=path)}") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - pickled objects other than tensors, a damaged file
    raise DataError(f"{path} cannot be read with torch.load(weights_only=True) "
                    f"({_reason(e)}); if you trust the file, convert it to .npz: "
                    f"{_TO_NPZ.format(path=path)}") from e


def _reason(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def _numpy(value) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _unwrap(obj, where: str) -> dict[str, np.ndarray]:
  for _ in range(3):  # {"model": {...}}, {"state_dict": {...}}, possibly nested
    inner = next((obj[k] for k in ("model", "state_dict")
                  if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise DataError(f"{where} holds a {type(obj).__name__}, not a state dict (tensor names "
                    "mapped to tensors)")
  sd = {str(k): v for k, v in obj.items()}
  if sd and all(k.startswith("module.") for k in sd):  # DistributedDataParallel
    sd = {k[len("module."):]: v for k, v in sd.items()}
  if (any(k.startswith("encoder.") for k in sd)
      and all(k.startswith(("encoder.", "decoder.")) for k in sd)):  # SimMIM: the encoder
    sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
  for k, v in sd.items():
    if not hasattr(v, "shape"):
      raise DataError(f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor; give the "
                      "model's state dict (or a checkpoint holding it under 'model')")
  return {k: _numpy(v) for k, v in sd.items()}


# --------------------------------------------------------------------------- mapping
@dataclasses.dataclass(frozen=True)
class _Spec:
  """Where a Flax parameter comes from: tensor `key` of `shape`, through `fn`. kind: "param"
  (required), "head" (copied when its shape fits) or "optional" (mask_token)."""

  key: str
  shape: tuple
  fn: Callable[[np.ndarray], np.ndarray]
  kind: str = "param"
  hint: str = ""


def _same(a):
  return a


def _ln(base: str, leaf: str, shape) -> _Spec:
  return _Spec(f"{base}.{'weight' if leaf == 'scale' else 'bias'}", shape, _same)


def _dense(base: str, leaf: str, shape, kind: str = "param") -> _Spec:
  if leaf == "kernel":  # Linear weight (out, in) -> Dense kernel (in, out)
    return _Spec(f"{base}.weight", (shape[1], shape[0]), np.transpose, kind)
  return _Spec(f"{base}.bias", shape, _same, kind)


def _conv(base: str, leaf: str, shape) -> _Spec:
  if leaf == "kernel":  # (out, in, kh, kw) -> (kh, kw, in, out)
    kh, kw, cin, cout = shape
    return _Spec(f"{base}.weight", (cout, cin, kh, kw), lambda w: w.transpose(2, 3, 1, 0))
  return _Spec(f"{base}.bias", shape, _same)


def _vit_spec(path: str, shape: tuple, sd: Mapping) -> _Spec | None:
  p = path.split("/")
  if path == "class_token":
    return _Spec("class_token", shape, _same)
  if path == "mask_token":
    return _Spec("mask_token", shape, _same, "optional")
  if p[0] == "conv_proj":
    return _conv("conv_proj", p[-1], shape)
  if p[0] == "head":
    return _dense("heads.head", p[-1], shape, "head")
  if path == "encoder/pos_embedding":
    return _Spec("encoder.pos_embedding", shape, _same,
                 hint=" (the model is built for another number of patches: use the "
                      "weights' image_size and patch_size)")
  if p[:2] == ["encoder", "ln"]:
    return _ln("encoder.ln", p[-1], shape)
  if len(p) < 4 or p[0] != "encoder" or not p[1].startswith("encoder_layer_"):
    return None
  block = f"encoder.layers.{p[1]}"
  if p[2] in ("ln_1", "ln_2"):
    return _ln(f"{block}.{p[2]}", p[-1], shape)
  if p[2] == "mlp" and p[3] in ("linear_1", "linear_2"):
    base = f"{block}.mlp.{'0' if p[3] == 'linear_1' else '3'}"
    if f"{base}.weight" not in sd and f"{block}.mlp.{p[3]}.weight" in sd:
      base = f"{block}.mlp.{p[3]}"  # torchvision < 0.13 named them linear_1 / linear_2
    return _dense(base, p[-1], shape)
  if p[2] != "self_attention":
    return None
  attn = f"{block}.self_attention"
  if p[3] in ("query", "key", "value"):
    k = ("query", "key", "value").index(p[3])
    if p[-1] == "kernel":  # rows k*d:(k+1)*d of in_proj_weight (3d, D), transposed
      width, d = shape[0], shape[1] * shape[2]
      return _Spec(f"{attn}.in_proj_weight", (3 * d, width),
                   lambda w: w[k * d:(k + 1) * d].T.reshape(shape))
    d = shape[0] * shape[1]
    return _Spec(f"{attn}.in_proj_bias", (3 * d,), lambda b: b[k * d:(k + 1) * d].reshape(shape))
  if p[3] == "out":
    if p[-1] == "kernel":  # out_proj.weight (D, heads * head_dim) -> (heads, head_dim, D)
      return _Spec(f"{attn}.out_proj.weight", (shape[2], shape[0] * shape[1]),
                   lambda w: w.T.reshape(shape))
    return _Spec(f"{attn}.out_proj.bias", shape, _same)
  return None


def _swin_spec(path: str, shape: tuple, sd: Mapping) -> _Spec | None:
  p = path.split("/")
  if path == "mask_token":
    return _Spec("mask_token", shape, _same, "optional")
  if p[0] == "patch_embed" and len(p) == 3:
    return _conv("patch_embed.proj", p[-1], shape) if p[1] == "proj" else (
        _ln("patch_embed.norm", p[-1], shape) if p[1] == "norm" else None)
  if p[0] == "norm":
    return _ln("norm", p[-1], shape)
  if p[0] == "head":
    base = "head.fc" if any(k.startswith("head.fc.") for k in sd) else "head"
    return _dense(base, p[-1], shape, "head")
  if not p[0].startswith("layers_") or len(p) < 3:
    return None
  i = int(p[0][len("layers_"):])
  if p[1] == "downsample":
    stage = i if _merging_ends_stage(sd) else i + 1
    base = f"layers.{stage}.downsample.{p[2]}"
    return _ln(base, p[-1], shape) if p[2] == "norm" else _dense(base, p[-1], shape)
  if not p[1].startswith("blocks_"):
    return None
  base = f"layers.{i}.blocks.{p[1][len('blocks_'):]}." + ".".join(p[2:-1])
  if p[-1] == "relative_position_bias_table":
    return _Spec(f"{base}.relative_position_bias_table", shape, _same,
                 hint=" (another window size: build the model with the weights' window_size, "
                      "or resize the table with swin.interpolate_relative_position_bias)")
  if p[2] in ("norm1", "norm2"):
    return _ln(base, p[-1], shape)
  return _dense(base, p[-1], shape)


def _merging_ends_stage(sd: Mapping) -> bool:
  """The official / SimMIM / timm < 0.9 layout (stage 0 has a `downsample`), as timm's own
  `checkpoint_filter_fn` tells it."""
  return "layers.0.downsample.reduction.weight" in sd


def _convert(state_dict, like, spec_of, family: str, skippable: Callable[[str], bool],
             where: str):
  sd = _unwrap(state_dict, where)
  wrapped = isinstance(like, Mapping) and set(like) == {"params"}
  tree = like["params"] if wrapped else like
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  specs = {}
  for path, ref in flat.items():
    spec = spec_of(path, tuple(ref.shape), sd)
    if spec is None:
      raise DataError(f"the model's parameter {path} {tuple(ref.shape)} has no counterpart in "
                      f"the {family} layout: is `like` the parameters of the matching model?")
    specs[path] = spec
  required = [s.key for s in specs.values() if s.kind == "param"]
  if required and not any(k in sd for k in required):
    raise DataError(f"{where} holds none of the tensors of the {family} layout (it has "
                    f"{', '.join(sorted(sd)[:3]) or 'none'}, ...): are these {family} weights?")
  out, notes, used = {}, [], set()

  def keep(path, ref, why):
    if isinstance(ref, jax.ShapeDtypeStruct):
      notes.append(f"{path}: {why}; left out (abstract `like`: graft the result into an "
                   "initialised model)")
    else:
      out[path] = np.asarray(ref)
      notes.append(f"{path}: {why}; kept as in `like`")

  for path, ref in flat.items():
    spec, shape = specs[path], tuple(ref.shape)
    if spec.key not in sd:
      if spec.kind == "param":
        raise DataError(f"{where} has no tensor {spec.key} (for the model's {path}, shape "
                        f"{shape}): weights of another model or model size?")
      keep(path, ref, f"{spec.key} is not in the weights")
      continue
    value = sd[spec.key]
    used.add(spec.key)
    if tuple(value.shape) != spec.shape:
      if spec.kind != "param":
        keep(path, ref, f"{spec.key} has shape {tuple(value.shape)}, the model needs "
                        f"{spec.shape}")
        continue
      raise DataError(f"{where}: tensor {spec.key} has shape {tuple(value.shape)}, the model's "
                      f"{path} {shape} needs {spec.shape}{spec.hint}")
    converted = np.array(spec.fn(value), dtype=ref.dtype, order="C")  # a copy
    if converted.shape != shape:  # a mapping error of this module, not the user's
      raise DataError(f"{spec.key} converts to shape {converted.shape}, not {path}'s {shape}")
    out[path] = converted
    if spec.kind == "head":
      notes.append(f"{path}: copied from {spec.key}")
  for key in sorted(set(sd) - used):
    if key.rsplit(".", 1)[-1] in _BUFFERS:
      continue
    if skippable(key):
      notes.append(f"{key} {tuple(sd[key].shape)}: not a parameter of the model, skipped")
      continue
    raise DataError(f"{where} has tensor {key} {tuple(sd[key].shape)}, which the model has no "
                    "parameter for: weights of another model or model size?")
  params = flax.traverse_util.unflatten_dict(out, sep="/")
  return ({"params": params} if wrapped else params), notes


def vit_params_from_torchvision(state_dict, like, where: str = "the state dict"):
  """Flax params of `vit.VisionTransformer` from torchvision's ViT state dict.

  Args:
    state_dict: {name: array} (numpy or torch tensors) of a torchvision `VisionTransformer`
      (`vit_b_16` for `vit.vit_b16()`); a checkpoint dict nesting it is unwrapped.
    like: the model's params tree (arrays or `jax.ShapeDtypeStruct`s), with or without its
      "params" key; it gives the structure, shapes and dtypes.
    where: how errors name the weights.

  Returns:
    (params in `like`'s structure as numpy arrays, notes: one line per head parameter or
    mask token copied, kept or skipped).
  """
  return _convert(state_dict, like, _vit_spec, "torchvision ViT",
                  lambda key: key.startswith("heads."), where)


def swin_params_from_timm(state_dict, like, where: str = "the state dict"):
  """Flax params of `swin.SwinTransformer` from a timm (< 0.9 or >= 0.9), official or SimMIM
  Swin state dict; arguments and result as `vit_params_from_torchvision`. The notes also
  say which patch-merging layout was read."""
  sd = _unwrap(state_dict, where)
  params, notes = _convert(sd, like, _swin_spec, "timm Swin",
                           lambda key: key.startswith("head.") or key == "mask_token", where)
  layout = ("layers.{i}.downsample ends stage i (official Swin, SimMIM, timm < 0.9)"
            if _merging_ends_stage(sd) else
            "layers.{i+1}.downsample starts stage i+1 (timm >= 0.9)")
  return params, [f"patch merging: {layout}"] + notes


_CONVERTERS = {"vit": vit_params_from_torchvision, "swin": swin_params_from_timm}


def load_pretrained(path, model_name: str, like) -> tuple[Any, list[str]]:
  """(params, notes) of the weights file `path` for `model_name` ("vit": torchvision's
  layout, "swin": timm's), in the structure of `like`; see the module docstring."""
  if model_name not in _CONVERTERS:
    raise ConfigError(f"pre-trained weights can be read for the models {sorted(_CONVERTERS)}, "
                      f"not {model_name!r}")
  return _CONVERTERS[model_name](read_state_dict(path), like, where=str(path))
