import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# One XLA compilation cache for the whole test session: the test processes themselves (jax
# reads these variables when it is first imported, after this file) and every trainer process
# they start inherit it, so a computation compiled once is loaded by every later test, resume
# or rerun that builds it again. pytest-xdist workers share one directory through the run id
# the workers are given.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN_ID:
  _XLA_CACHE = os.path.join(tempfile.gettempdir(), f"medda_xla_cache_{_RUN_ID}")
  os.makedirs(_XLA_CACHE, exist_ok=True)
else:
  _XLA_CACHE = tempfile.mkdtemp(prefix="medda_xla_cache_")
# The per-user cache (the demo data a trainer builds when config.data.cache_dir is empty) is
# one per session too, beside the XLA one: the suite never writes into the home directory.
_CACHE_ENV = {"MEDDA_JAX_CACHE": _XLA_CACHE + "_user",
              "JAX_COMPILATION_CACHE_DIR": _XLA_CACHE,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
os.environ.update(_CACHE_ENV)
# XLA's CPU backend at optimisation level 0 rather than 3: the suite's computations are small
# and mostly compiled once, so compile time dominates (level 1 took about a third off level 3;
# level 0 another 16-24 % off the CateNorm and MetaMedSeg smoke runs, and the same time for
# SIFA's heavier one). A user's XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
_CACHE_ENV["XLA_FLAGS"] = os.environ["XLA_FLAGS"]

# The fixtures that run a trainer, and the pytest-xdist group of the tests that read them:
# with `--dist loadgroup` a group runs on one worker, so each run is made once per session.
# shared_run adds its fixtures; a test reading another module-scoped fixture stays on one
# worker with the rest of its module.
SHARED_RUNS = {"two_process_run": "smoke_run"}  # its tests compare it with smoke_run


def pytest_itemcollected(item):  # before pytest-xdist reads the groups
  names = getattr(item, "fixturenames", ())
  groups = {SHARED_RUNS[f] for f in names if f in SHARED_RUNS}
  assert len(groups) <= 1, f"{item.nodeid} reads runs of two groups: {sorted(groups)}"
  if not groups:
    definitions = item._fixtureinfo.name2fixturedefs
    if any(definitions[f][-1].scope == "module" for f in names if f in definitions):
      groups = {item.module.__name__}
  for group in groups:
    item.add_marker(pytest.mark.xdist_group(group))


# The costliest work units first: a pytest-xdist worker takes its next unit (a group, or a
# lone test) when it is nearly idle, so a long unit taken last keeps one worker busy while
# the other waits; longest first packs the two cores (--no-loadscope-reorder in pyproject
# keeps this order). Seconds from `--durations=0` on 2 cores; the order only decides which
# worker runs what, when.
COSTLY_FIRST = (
    "transfer_run",  # 331 s, with the two-process transfer test
    "sifa_run",  # 275 s
    "test_sifa",  # 210 s
    "smoke_run",  # 184 s, plus 22 s for the padded three-device run that now reads it
    "stargan_run",  # 146 s
    "wgan_run",  # 139 s
    "aiva_run",  # 138 s
    "cyclegan_run",  # 105 s
    "simmim_run",  # about 100 s with its kill / resume and NaN runs
    "popar_run",  # about 80 s
    "dira_run",  # about 65 s with its kill / resume run
    "catenorm_run",  # 104 s
    "fda_run",  # 75 s
    "odex_run",  # 71 s
    "stain_aglr_run",  # 68 s
    "sissi_run",  # 56 s
    "tests/test_multiprocess.py::test_host_inner_loop_on_two_processes_equals_one_process",
    "test_gan_engine",
    "avagrad_run", "melanoma_run", "test_user_domains", "test_catenorm",
)


def pytest_collection_modifyitems(items):
  def unit(item):
    group = item.get_closest_marker("xdist_group")
    return group.args[0] if group else item.nodeid
  rank = {name: i for i, name in enumerate(COSTLY_FIRST)}
  items.sort(key=lambda item: rank.get(unit(item), len(rank)))  # stable: the rest as collected


def run_train(workdir, *overrides, config="configs/metamedseg.py:smoke", env=None, timeout=600,
              background=False):
  """Runs the command-line trainer as a user would, from the repository root."""
  cmd = [sys.executable, "-m", "medda_jax.train", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  full_env = dict(os.environ, **_CACHE_ENV, **(env or {}))
  if background:
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
  """One shared cache directory so the smoke collection is built once per test session."""
  return tmp_path_factory.mktemp("demo_cache")


def shared_run(config, *overrides, name, demo_data=False, env=None):
  """A session fixture that runs `config` once with `overrides` and returns (workdir, proc);
  every end-to-end test of a method reads its one run through such a fixture, and every test
  reading it runs on one pytest-xdist worker. `demo_data` passes the session's demo cache to
  the trainer; `env` is added to its environment."""
  SHARED_RUNS[name] = name
  @pytest.fixture(scope="session", name=name)
  def fixture(tmp_path_factory, request):
    workdir = tmp_path_factory.mktemp(name)
    extra = [f"--config.data.cache_dir={request.getfixturevalue('demo_cache')}"] if demo_data \
        else []
    proc = run_train(workdir, *extra, *overrides, config=config, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc
  return fixture


# The smoke runs on two devices of one process: their end-to-end tests read them, and they
# are the references that a two-process run must equal (tests/test_multiprocess.py); their
# data-parallel path is the one these runs take. MetaMedSeg's puts one task on each device.
TWO_DEVICES = {"JAX_NUM_CPU_DEVICES": "2"}
smoke_run = shared_run("configs/metamedseg.py:smoke", name="smoke_run", demo_data=True,
                       env=TWO_DEVICES)
wgan_run = shared_run("configs/wgan_synth.py:smoke", name="wgan_run", env=TWO_DEVICES)
stargan_run = shared_run("configs/stargan.py:smoke", name="stargan_run", env=TWO_DEVICES)
cyclegan_run = shared_run("configs/cyclegan.py:smoke", name="cyclegan_run", env=TWO_DEVICES)
sifa_run = shared_run("configs/synthmix.py:smoke", name="sifa_run", env=TWO_DEVICES)
# The gradient-transfer smoke run on two devices too: a two-process run of some of its runs
# must equal them (tests/test_multiprocess.py), and its end-to-end tests read it.
transfer_run = shared_run("configs/transfer.py:smoke", name="transfer_run", demo_data=True,
                          env=TWO_DEVICES)


def error_message(proc, code=2) -> str:
  """The one `error:` message a bad input ends with (its first line names the mistake; a
  data layout's message goes on over a few lines showing the expected layout), after
  checking the exit code and that no traceback was printed."""
  assert proc.returncode == code, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
  assert len(starts) == 1, proc.stderr[-2000:]
  message = "\n".join(lines[starts[0]:])
  assert len(message.splitlines()) <= 12, message
  return message


def final_metrics(workdir) -> dict:
  """The `final` record of a run's metrics.jsonl (exactly one must exist)."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  finals = [r for r in records if r["stage"] == "final"]
  assert len(finals) == 1
  return {k: v for k, v in finals[0].items() if k not in ("stage", "step")}


def checkpoint_steps(directory) -> list[int]:
  """The steps saved so far in an orbax checkpoint directory (none if it does not exist)."""
  if not directory.exists():
    return []
  return [int(p.name) for p in directory.iterdir() if p.name.isdigit()]


def kill_after_results(child, results_file, min_entries: int, timeout: float = 400) -> None:
  """SIGKILLs a background trainer once its JSON file of finished runs holds at least
  `min_entries` entries; fails if the run ends first."""
  deadline = time.time() + timeout
  while time.time() < deadline and child.poll() is None:
    if results_file.exists():
      try:
        if len(json.loads(results_file.read_text())) >= min_entries:
          break
      except json.JSONDecodeError:  # caught mid-write
        pass
    time.sleep(0.05)
  assert child.poll() is None, "the run finished before it could be interrupted"
  child.send_signal(signal.SIGKILL)
  child.communicate()


def data_error(fn, with_layout: bool = False) -> str:
  """The message of the DataError `fn()` raises, which must be one line; `with_layout`: a
  CSV's error (tables.read_csv_rows), whose first line names the mistake and the next few
  the expected layout; returns that first line."""
  from medda_jax.errors import DataError
  with pytest.raises(DataError) as e:
    fn()
  message = str(e.value)
  if with_layout:
    lines = message.splitlines()
    assert 2 <= len(lines) <= 12, message
    return lines[0]
  assert "\n" not in message
  return message


def kill_after_checkpoint(child, directory, timeout: float = 400) -> int:
  """SIGKILLs a background trainer as soon as the orbax checkpoint directory holds a step;
  returns that step. Fails if the run ends first."""
  deadline = time.time() + timeout
  while time.time() < deadline and child.poll() is None and not checkpoint_steps(directory):
    time.sleep(0.02)
  assert child.poll() is None, "the run finished before it could be interrupted"
  child.send_signal(signal.SIGKILL)
  child.communicate()
  return max(checkpoint_steps(directory))


def check_grafted_classifier(study, init: str, saved) -> int:
  """Grafts the pre-training run `init` (its parameters `saved`) into a fresh 3-label
  classifier of the pre-train-then-transfer `study` and checks every parameter: the same
  names as a random classifier, the head the random one's, each encoder parameter the saved
  one or, where the grids differ, the study's resize rule applied to it. Returns how many
  were resized."""
  import flax
  import numpy as np

  from medda_jax.methods.simmim.experiment import SCRATCH
  net = study.classifier(3)
  fresh = study.transfer_init(net, SCRATCH, None, seed=0)
  grafted = study.transfer_init(net, init, saved, seed=0)
  flat = lambda t: flax.traverse_util.flatten_dict(t, sep="/")  # noqa: E731
  src, new, random = flat(saved["encoder"]), flat(grafted), flat(fresh)
  assert set(new) == set(random)
  resized = 0
  for path, value in new.items():
    if path.startswith("head/"):
      np.testing.assert_array_equal(value, random[path])
    elif src[path].shape == value.shape:
      np.testing.assert_array_equal(value, src[path], err_msg=path)
    else:
      resized += 1
      want = study._resize_rule(path, np.asarray(src[path]), value.shape)
      np.testing.assert_allclose(value, want, err_msg=path)
  return resized


def abstract_variables(model, shape, dtype=None):
  """The variables `model.init(..., train=False)` would make for an input of `shape`, as
  shapes only (jax.eval_shape: nothing is allocated or compiled)."""
  import functools

  import jax
  import jax.numpy as jnp
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        jax.ShapeDtypeStruct(shape, dtype or jnp.float32))


def fill_variables(shapes, seed=0):
  """Variables of the right structure drawn with NumPy (fast; `init` compiles slowly on CPU).

  Kernels get He-like scales so activations stay O(1); BN scales near 1, running variances
  positive; everything else (biases, class token, position embeddings, BN running means)
  small and non-zero, so that e.g. ViT's zero-initialised head does not hide the encoder.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      x = rng.normal(scale=np.sqrt(2.0 / fan_in), size=leaf.shape)
    elif name in ("scale", "var"):
      x = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:
      x = rng.normal(scale=0.1, size=leaf.shape)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def param_count(tree) -> int:
  import jax
  import numpy as np
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def set_fields(c, fields: dict):
  """Sets each dotted field of the ConfigDict `c` ({"data.crop": 20, ...}); returns `c`."""
  for field, value in fields.items():
    *path, leaf = field.split(".")
    node = c
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


def config_with(config: str, field: str, value):
  """`config` (a configs/ path with its variant) loaded with the dotted `field` set to `value`."""
  from medda_jax.config_utils import load_config
  return set_fields(load_config(config), {field: value})
