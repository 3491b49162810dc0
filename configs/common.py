"""Config fields every experiment shares, and the check of the variant name.

A config file loads this module with `config_utils.load_sibling(__file__, "common")` (the
configs are files, not a package), calls `check_variant` first and `add_shared` once its
`model` and `engine` sections exist. The shared fields are validated in one place,
`medda_jax.config_utils.validate_shared`, which every method's `validate` calls.

Shared fields:
  seed                   initialisation, batches and sampling (absent where a config
                         repeats every run over its own list of `seeds`)
  model.compute_dtype    "auto" (bfloat16 on GPU/TPU, float32 on CPU), "float32", "bfloat16"
  engine.inner_loop      "auto" (= "scan" everywhere), "scan", "host" (steps unrolled)
  engine.steps_per_call  updates per jitted call of supervised training (pre-training,
                         fine-tuning, classifiers); GAN stages keep their own count of
                         generator steps per call (gan.steps_per_call, stargan.steps_per_call)
  engine.eval_batch_size examples per evaluation call (padded, sharded batches)
A method's older name for the last two (e.g. train.eval_batch_size) stays an alias of the
shared field: setting either sets both.
"""

import ml_collections

from medda_jax.errors import ConfigError


def check_variant(variant: str | None, known: tuple[str, ...], config: str) -> None:
  """One line naming the known variants when `variant` is not one of them (None: default)."""
  if variant is not None and variant not in known:
    raise ConfigError(f"unknown variant {variant!r} of {config}; known variants: "
                      f"{', '.join(known)}")


def add_shared(c: ml_collections.ConfigDict, *, seed: int | None, steps_per_call: int,
               eval_batch_size: int) -> None:
  """Adds the shared fields (`c.model` and `c.engine` are created if missing; no `seed`
  when None: an experiment that repeats over `seeds`)."""
  if seed is not None:
    c.seed = seed
  for section in ("model", "engine"):
    if section not in c:
      c[section] = ml_collections.ConfigDict()
  c.model.compute_dtype = "auto"  # "auto" = bfloat16 on GPU/TPU, float32 on CPU
  c.engine.inner_loop = "auto"  # "scan", "host" (unrolled) or "auto" (= scan)
  c.engine.steps_per_call = steps_per_call  # supervised updates per jitted call
  c.engine.eval_batch_size = eval_batch_size  # examples per evaluation call


def alias(c: ml_collections.ConfigDict, old: str, shared: str) -> None:
  """Makes the field `old` (dotted) a second name of the shared field `shared`."""
  *path, leaf = old.split(".")
  node = c
  for part in path:
    node = node[part]
  section, field = shared.split(".")
  node[leaf] = c[section].get_ref(field)
