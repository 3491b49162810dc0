"""Command-line trainer.

  python -m medda_jax.train --config=configs/metamedseg.py[:variant] --workdir=DIR \
      [--config.meta.inner.epochs=8 ...]

Loads the config, runs `medda_jax.methods.<config.method>.train_and_evaluate` (which
validates the config before anything else) and prints the final metrics. Errors a user can cause end with one message and a non-zero
exit code, not a traceback. Rerunning the same command after an interruption resumes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from medda_jax import files
from medda_jax.engine import workdir as workdir_lib
from medda_jax.errors import ConfigError, MeddaError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/config.py[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_ALLOW_CHANGE = flags.DEFINE_boolean(
    "allow_config_change", False,
    "Go on in a workdir that was started with another config (the change is recorded).")


def run(config, workdir: str) -> dict:
  import jax  # after flag parsing: JAX starts here

  from medda_jax import parallel
  from medda_jax.engine import timing

  timing.start(workdir)  # the clock counts device start-up and data loading too
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Reruns and resumed runs load compiled steps instead of compiling them again.
    jax.config.update("jax_compilation_cache_dir", str(files.user_cache_dir("xla")))
  parallel.maybe_initialize_distributed()
  try:
    method = importlib.import_module(f"medda_jax.methods.{config.method}")
  except ModuleNotFoundError as e:
    raise ConfigError(f"config.method={config.method!r} names no module in medda_jax.methods") from e
  method.validate(config)  # a wrong field stops the run before the workdir is touched
  workdir_lib.open_workdir(workdir, json.loads(config.to_json_best_effort()),
                           allow_config_change=_ALLOW_CHANGE.value,
                           main_process=parallel.is_main_process())
  try:
    return method.train_and_evaluate(config, workdir)
  finally:
    timing.write()
    spent = timing.summary()
    if parallel.is_main_process():
      first = spent["first_call_s"]
      print(f"time: {spent['wall_s']:.1f} s, of which {spent['compile_s']:.1f} s compiling"
            + ("" if first is None else f"; first training call done after {first:.1f} s")
            + f" (workdir/{timing.FILE})", file=sys.stderr)


def _unknown_override(argv) -> str | None:
  """The first `--config.a.b=...` whose field the config does not have, if any."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  from medda_jax.config_utils import load_config
  try:
    config = load_config(spec)
  except Exception:  # the config itself is broken: reported by the caller
    return None
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      field = arg[len("--config."):].split("=", 1)[0]
      node = config
      for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
          return field
        node = node[part]
  return None


def parse_flags(argv):
  """absl flag parsing that turns every mistake into one line and exit code 2."""
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].partition(":")[0]
      if not os.path.isfile(path):
        print(f"error: config file {path!r} does not exist", file=sys.stderr)
        sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parsing failure is the user's input
    unknown = _unknown_override(argv)
    if unknown:
      message = f"unknown config field config.{unknown}"
    else:  # the last line holds the reason (config_flags embeds whole tracebacks)
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      message = lines[-1] if lines else type(e).__name__
      if len(lines) > 1 and lines[0].startswith("flag --config"):
        message = f"{lines[0].split(':')[0]}: {message}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config=path/to/config.py[:variant] is required")
  # Progress bars and our own lines carry the news; library INFO chatter stays hidden.
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    workdir_lib.prepare(_WORKDIR.value)  # a missing or unusable workdir, before JAX starts
    final = run(_CONFIG.value, _WORKDIR.value)
  except workdir_lib.Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except MeddaError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print("interrupted: stopped at once, before the next checkpoint; rerun the same command "
          "to resume from the last one", file=sys.stderr)
    sys.exit(130)
  from medda_jax import parallel
  if parallel.is_main_process():  # one copy of the result, not one per process
    print(json.dumps(final, indent=1, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
