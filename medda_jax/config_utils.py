"""Loading and validating `configs/<experiment>.py` files.

A config file defines `get_config(variant: str | None = None)` returning an
`ml_collections.ConfigDict`. Validation helpers raise `ConfigError` with the
dotted field name, the value found and what is allowed.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
from typing import Any, Iterable

import ml_collections

from medda_jax.errors import ConfigError


def _load_module(file: pathlib.Path):
  module_spec = importlib.util.spec_from_file_location(f"_medda_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:variant]` the way `--config=` does on the command line."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path!r} does not exist")
  module = _load_module(file)
  return module.get_config(variant or None) if variant else module.get_config()


def load_sibling(config_file: str, name: str):
  """The module `<name>.py` beside a config file (configs/ is a folder of files, not a
  package): how a config reads configs/common.py."""
  return _load_module(pathlib.Path(config_file).resolve().parent / f"{name}.py")


def validate_shared(c) -> None:
  """The fields of configs/common.py, checked once for every method."""
  if "seed" in c:
    check_range(c, "seed", 0, integer=True)
  check_choice(c, "model.compute_dtype", ("auto", "float32", "bfloat16"))
  check_choice(c, "engine.inner_loop", ("auto", "scan", "host"))
  check_range(c, "engine.steps_per_call", 1, integer=True)
  check_range(c, "engine.eval_batch_size", 1, integer=True)


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a name that is also a file name


def named_paths(entries, field: str, example: str, taken: Iterable[str] = ()) -> dict[str, str]:
  """A config's `name=path` entries (the user's data) as {name: path}, in order: each name
  unique, free of the built-in names in `taken`, and usable as a file name; `~` expanded."""
  if isinstance(entries, str):
    raise ConfigError(f"config.{field} must be a tuple of 'name=path' strings, e.g. "
                      f"\"('{example}',)\"")
  taken, out = frozenset(taken), {}
  for entry in entries:
    name, sep, path = str(entry).partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise ConfigError(f"config.{field} entry {entry!r} must be 'name=path', e.g. {example!r}")
    if not NAME.match(name):
      raise ConfigError(f"config.{field} entry {entry!r}: the name may hold letters, digits, "
                        "'_', '.', '+' and '-' only")
    if name in out:
      raise ConfigError(f"config.{field} names {name!r} twice")
    if name in taken:
      raise ConfigError(f"config.{field} entry {entry!r}: the name {name} is taken by a "
                        "built-in dataset; choose another")
    out[name] = str(pathlib.Path(path).expanduser())
  return out


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    if part not in value:
      raise ConfigError(f"config.{field} is missing")
    value = value[part]
  return value


def check_choice(config, field: str, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  value = _get(config, field)
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not allowed; choose one of {list(choices)}")


def check_range(config, field: str, low=None, high=None, *, integer=False,
                low_inclusive=True) -> None:
  """Checks low <= value <= high (or low < value when low_inclusive=False)."""
  value = _get(config, field)
  kind = "an integer" if integer else "a number"
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      integer and not isinstance(value, int)):
    raise ConfigError(f"config.{field}={value!r} must be {kind}")
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and value > high
  if too_low or too_high:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    bracket = "[" if low_inclusive else "("
    raise ConfigError(f"config.{field}={value!r} is out of range; allowed {bracket}{lo}, {hi}]")


def check_subset(config, field: str, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  value = tuple(_get(config, field))
  unknown = [v for v in value if v not in allowed]
  if unknown:
    raise ConfigError(f"config.{field} has unknown entries {unknown}; allowed {list(allowed)}")
  if not value:
    raise ConfigError(f"config.{field} must not be empty")


def inner_loop(c) -> str:
  """`config.engine.inner_loop`, with "auto" = "scan" on every backend: since
  `models/conv.py` a scanned chunk runs as fast as unrolled code on the CPU too, and it
  compiles one step instead of `steps_per_call` copies. "host" (the unrolled chunk)
  stays selectable for comparison."""
  return "scan" if c.engine.inner_loop == "auto" else c.engine.inner_loop


def compute_dtype(c):
  """`config.model.compute_dtype`, with "auto" = bfloat16 on accelerators, float32 on CPU."""
  import jax
  import jax.numpy as jnp
  if c.model.compute_dtype == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(c.model.compute_dtype)
