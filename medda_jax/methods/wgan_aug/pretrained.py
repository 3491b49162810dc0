"""ImageNet-initialised classifiers from a weights file the user supplies (nothing is
downloaded): a torchvision `state_dict` saved with `torch.save` (.pth / .pt, read with torch
if it is installed) or the same tensors saved as `.npz` under their torchvision names.

The paper fine-tunes "a pre-trained model default Resnet-50" (torchvision's ResNet-50
ImageNet weights) and a ViT-B/16; `resnet50` takes `torchvision.models.resnet50` weights
and `vit_b16` takes `torchvision.models.vit_b_16` weights. The 1000-class ImageNet head is
never loaded: the 2-class head keeps its fresh initialisation. The CNN-Transformer is the
paper's own network and has no ImageNet weights.

Images are fed as torchvision's weights expect them: grey replicated to RGB, then
standardised with ImageNet's channel mean and std (`imagenet_standardise`).
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.errors import DataError
from medda_jax.models.resnet import gray_to_rgb, load_torchvision_resnet

PRETRAINED = ("resnet50", "vit_b16")  # classifiers that have torchvision ImageNet weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def imagenet_standardise(images: jax.Array) -> jax.Array:
  """[N, H, W, 1 or 3] images in [0, 1] -> RGB standardised as torchvision's weights expect."""
  x = gray_to_rgb(images)
  return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torchvision state dict as {torch name: numpy array} from .npz or torch.save output
  (a checkpoint dict holding it under "state_dict" or "model" is unwrapped)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"weights file {path} does not exist")
  if path.suffix.lower() == ".npz":
    try:
      with np.load(path) as f:
        return {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read weights file {path}: {e}") from e
  if path.suffix.lower() not in _TORCH_SUFFIXES:
    raise DataError(f"weights file {path} must be a .npz or a torch.save state dict "
                    f"({', '.join(_TORCH_SUFFIXES)})")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{path} is a torch file and torch is not installed: install torch or "
                    "save the state dict as .npz (np.savez(path, **{k: v.numpy() for k, v "
                    "in state_dict.items()}))") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types on a damaged or foreign file
    raise DataError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from e
  for key in ("state_dict", "model"):
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise DataError(f"{path} holds no state dict of tensors")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


# --------------------------------------------------------------------------- ViT
def _vit_flax_to_torch(keys: tuple[str, ...]) -> tuple[str, str]:
  """Flax path of a VisionTransformer parameter -> (torch name, how it is converted)."""
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}
  if keys == ("class_token",):
    return "class_token", "same"
  if keys == ("encoder", "pos_embedding"):
    return "encoder.pos_embedding", "same"
  if keys[0] == "conv_proj":
    return f"conv_proj.{leaf[keys[-1]]}", "conv" if keys[-1] == "kernel" else "same"
  if keys[:2] == ("encoder", "ln"):
    return f"encoder.ln.{leaf[keys[-1]]}", "same"
  if keys[0] == "encoder":  # encoder / encoder_layer_i / block part / ...
    layer, part = f"encoder.layers.{keys[1]}", keys[2]
    if part in ("ln_1", "ln_2"):
      return f"{layer}.{part}.{leaf[keys[-1]]}", "same"
    if part == "mlp":
      index = {"linear_1": 0, "linear_2": 3}[keys[3]]
      return f"{layer}.mlp.{index}.{leaf[keys[-1]]}", "linear" if keys[-1] == "kernel" else "same"
    if part == "self_attention":
      projection, kind = keys[3], keys[4]
      if projection == "out":
        return (f"{layer}.self_attention.out_proj.{leaf[kind]}",
                "out_kernel" if kind == "kernel" else "same")
      return (f"{layer}.self_attention.in_proj_{leaf[kind]}",
              f"{projection}_{kind}")  # a third of the fused q, k, v projection
  if keys[0] == "head":
    return f"heads.head.{leaf[keys[-1]]}", "linear" if keys[-1] == "kernel" else "same"
  raise KeyError("/".join(keys))


def _vit_value(state: Mapping[str, np.ndarray], name: str, how: str, shape) -> np.ndarray:
  """The torch tensor `name` in the Flax layout of a parameter of `shape`."""
  value = state[name]
  if how == "conv":  # OIHW -> HWIO
    return np.transpose(value, (2, 3, 1, 0))
  if how == "linear":  # (out, in) -> (in, out)
    return value.T
  if how == "out_kernel":  # (out, heads * head_dim) -> (heads, head_dim, out)
    return value.T.reshape(shape)
  if how != "same":  # query/key/value: rows [q; k; v] of in_proj_weight / in_proj_bias
    projection, kind = how.split("_")
    width = value.shape[0] // 3
    rows = value[("query", "key", "value").index(projection) * width:][:width]
    return (rows.T if kind == "kernel" else rows).reshape(shape)
  return value


def _mlp_alias(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Older torchvision releases named the MLP layers mlp.linear_1 / mlp.linear_2."""
  out = {}
  for k, v in state.items():
    out[k.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3.")] = v
  return out


def load_torchvision_vit(state: Mapping[str, np.ndarray], variables: Mapping[str, Any],
                         skip_head: bool = True) -> dict[str, Any]:
  """torchvision `vit_b_16` state dict -> the variables of a `VisionTransformer` of the same
  shape. Raises ValueError listing the missing keys and shape mismatches."""
  state = _mlp_alias(dict(state))
  params = dict(variables["params"])
  problems, used = [], set()

  def convert(path, leaf):
    keys = tuple(str(p.key) for p in path)
    if skip_head and keys[0] == "head":
      return leaf
    name, how = _vit_flax_to_torch(keys)
    used.add(name)
    if name not in state:
      problems.append(f"missing {name}")
      return leaf
    try:
      value = _vit_value(state, name, how, leaf.shape)
    except ValueError:  # a fused projection that cannot be cut to this shape
      value = None
    if value is None or value.shape != tuple(leaf.shape):
      problems.append(f"{name}: file {state[name].shape}, model expects {tuple(leaf.shape)}"
                      + (f" (as {how})" if how != "same" else ""))
      return leaf
    return jnp.asarray(value, leaf.dtype)

  loaded = jax.tree_util.tree_map_with_path(convert, params)
  ignored = ("heads.",) if skip_head else ()
  unexpected = sorted(k for k in state if k not in used and not k.startswith(ignored))
  problems += [f"unexpected {k}" for k in unexpected]
  if problems:
    raise ValueError("; ".join(problems))
  return {**variables, "params": loaded}


# --------------------------------------------------------------------------- entry point
def load_pretrained(name: str, path: str | os.PathLike, variables: Mapping[str, Any],
                    field: str) -> dict[str, Any]:
  """`variables` of classifier `name` with the backbone of the weights file at `path`
  (the head stays as initialised). Raises DataError in one line naming the config field
  `field` when the file does not fit the classifier's architecture."""
  state = read_state_dict(path)
  try:
    if name == "resnet50":
      buffer = io.BytesIO()  # the tested .npz reader of models/resnet.py
      np.savez(buffer, **state)
      buffer.seek(0)
      return load_torchvision_resnet(buffer, variables, skip_head=True)
    if name == "vit_b16":
      return load_torchvision_vit(state, variables, skip_head=True)
  except ValueError as e:
    detail = " ".join(str(e).split(": ", 1)[-1].split()) if name == "resnet50" else str(e)
    problems = [p for part in detail.split(" | ") for p in part.split("; ")]
    detail = "; ".join(problems[:2]) + (f" (and {len(problems) - 2} more)"
                                        if len(problems) > 2 else "")
    raise DataError(f"{field}={str(path)!r} does not fit the config's {name} (torchvision "
                    f"names and shapes expected): {detail}") from e
  raise DataError(f"{field}: {name} has no torchvision ImageNet weights; only "
                  f"{list(PRETRAINED)} can load a weights file")
