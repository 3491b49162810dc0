"""Pre-train, then transfer: the parameters of a pre-training checkpoint grafted into
another network (a classifier, a segmentation network) that shares part of its layout.

`pretrained_params` reads `state.params` of a stage checkpoint written by the engine's
loop (`engine.checkpoint`), checked against the pre-training model's own parameter shapes
first; `graft` copies a subtree of it (e.g. SimMIM's `encoder`) into the target's
parameters wherever the target has the same path, leaves the target's own parts (a new
head) as initialised, and stops with one line when a shared path has another shape and no
`resize` rule fits it (e.g. the relative-position tables of a Swin fine-tuned at another
window size).
"""

from __future__ import annotations

import pathlib
from typing import Callable

import flax
import jax
import numpy as np

from medda_jax.engine.checkpoint import restore_params
from medda_jax.errors import DataError


def pretrained_params(directory, like, hint: str = ""):
  """`state.params` of the newest checkpoint in `directory`, in the structure of `like` (a
  checkpoint of another model ends with one line naming the first parameter that differs)."""
  return jax.device_get(restore_params(pathlib.Path(directory), like, hint=hint))


def graft(target, source, *, prefix: str = "", skip: tuple[str, ...] = (),
          resize: Callable[[str, np.ndarray, tuple], np.ndarray | None] | None = None,
          where: str = "the checkpoint"):
  """Target parameters with every leaf of `source[prefix]` whose path the target has.

  Args:
    target: the new network's parameters (nested dicts).
    source: the pre-trained parameters.
    prefix: "/"-joined path of the subtree of `source` to graft ("" = all of it).
    skip: leaf names never grafted (e.g. "mask_token", which fine-tuning drops).
    resize: `resize(path, value, wanted_shape)` -> a value of the wanted shape, or None when
      it has no rule for that path (then the shape mismatch is an error).
    where: how errors name the source.

  Returns:
    (new target parameters, the grafted paths sorted).
  """
  sub = source
  for part in filter(None, prefix.split("/")):
    if part not in sub:
      raise DataError(f"{where} has no parameters under {prefix!r}")
    sub = sub[part]
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target), sep="/")
  flat_source = flax.traverse_util.flatten_dict(flax.core.unfreeze(sub), sep="/")
  grafted = []
  for path, value in flat_source.items():
    if path.rsplit("/", 1)[-1] in skip or path not in flat_target:
      continue
    wanted = tuple(np.shape(flat_target[path]))
    value = np.asarray(value)
    if value.shape != wanted:
      resized = resize(path, value, wanted) if resize is not None else None
      if resized is None:
        raise DataError(f"{where} does not fit the model: parameter {path} has shape "
                        f"{value.shape} there and {wanted} here")
      value = resized
    flat_target[path] = value.astype(np.asarray(flat_target[path]).dtype)
    grafted.append(path)
  if not grafted:
    raise DataError(f"{where} shares no parameter with the model (prefix {prefix!r})")
  return flax.traverse_util.unflatten_dict(flat_target, sep="/"), sorted(grafted)
