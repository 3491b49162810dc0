"""configs/common.py: the shared fields of every config, their one validation, the
unknown-variant error, and the older field names kept as aliases."""

import importlib.util
import pathlib

import ml_collections
import pytest

from conftest import run_train
from medda_jax import config_utils as cu
from medda_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _known_variants(path: pathlib.Path) -> tuple[str, ...]:
  """The variants a config file declares (its VARIANTS tuple)."""
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return tuple(module.VARIANTS)


# Every config file and the variants it declares: each must load, pass the shared
# validation and be named by the unknown-variant error.
VARIANTS = {p.name: _known_variants(p) for p in sorted(CONFIGS.glob("*.py"))
            if p.name != "common.py"}
# The older names that stay second names of the shared fields.
ALIASES = {"transfer.py": {"eval.batch_size": "engine.eval_batch_size"},
           "wgan_synth.py": {"train.steps_per_call": "engine.steps_per_call",
                             "train.eval_batch_size": "engine.eval_batch_size"},
           "stargan.py": {"classifier.steps_per_call": "engine.steps_per_call",
                          "classifier.eval_batch_size": "engine.eval_batch_size"}}


def _get(c, field):
  for part in field.split("."):
    c = c[part]
  return c


def _set(c, field, value):
  *path, leaf = field.split(".")
  for part in path:
    c = c[part]
  setattr(c, leaf, value)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_unknown_variant_names_the_known_ones(name):
  with pytest.raises(ConfigError) as e:
    cu.load_config(f"{CONFIGS / name}:anything")
  message = str(e.value)
  assert "\n" not in message and "'anything'" in message
  assert all(v in message for v in VARIANTS[name]), message


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_has_the_shared_fields_and_passes_their_validation(name):
  for variant in (None,) + VARIANTS[name]:
    c = cu.load_config(str(CONFIGS / name) + (f":{variant}" if variant else ""))
    cu.validate_shared(c)
    for field in ("model.compute_dtype", "engine.inner_loop", "engine.steps_per_call",
                  "engine.eval_batch_size"):
      assert field.split(".")[1] in c[field.split(".")[0]], (name, variant, field)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_old_field_names_and_shared_names_set_each_other(name):
  for old, shared in ALIASES[name].items():
    c = cu.load_config(str(CONFIGS / name))
    assert _get(c, old) == _get(c, shared)
    _set(c, old, 7)
    assert _get(c, shared) == 7
    _set(c, shared, 3)
    assert _get(c, old) == 3


@pytest.mark.parametrize("field, value, needle", [
    ("seed", -1, "config.seed=-1"),
    ("model.compute_dtype", "float16", "config.model.compute_dtype"),
    ("engine.inner_loop", "python", "config.engine.inner_loop"),
    ("engine.steps_per_call", 0, "config.engine.steps_per_call=0"),
    ("engine.eval_batch_size", 0, "config.engine.eval_batch_size=0"),
])
def test_shared_validation_names_the_field(field, value, needle):
  c = cu.load_config(str(CONFIGS / "metamedseg.py"))
  _set(c, field, value)
  with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
    cu.validate_shared(c)


def test_unknown_variant_on_the_command_line_is_one_error_line(tmp_path):
  proc = run_train(tmp_path, config="configs/stargan.py:anything", timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "unknown variant 'anything'" in errors[0], proc.stderr[-2000:]
  assert "digits_demo" in errors[0]


def test_named_paths_reads_a_users_entries_in_order():
  got = cu.named_paths(("b=~/x.csv", " a = /data/a "), "data.user", "s=/p")
  assert list(got) == ["b", "a"]
  assert got == {"b": str(pathlib.Path("~/x.csv").expanduser()), "a": "/data/a"}


@pytest.mark.parametrize("entries, needle", [
    ("a=/x", "must be a tuple of 'name=path' strings"),
    (("a",), "entry 'a' must be 'name=path', e.g. 's=/p'"),
    (("a=",), "must be 'name=path'"),
    (("=/x",), "must be 'name=path'"),
    (("a b=/x",), "the name may hold letters"),
    (("a=/x", "a=/y"), "names 'a' twice"),
    (("luna16=/x",), "the name luna16 is taken"),
])
def test_named_paths_refuses_bad_entries(entries, needle):
  with pytest.raises(ConfigError, match="config.data.user") as e:
    cu.named_paths(entries, "data.user", "s=/p", taken=("luna16",))
  assert needle in str(e.value)


def test_named_paths_reads_the_taken_names_once():
  # any iterable of built-in names: a generator is read once, for every entry
  with pytest.raises(ConfigError, match="the name luna16 is taken"):
    cu.named_paths(("ours=/x", "luna16=/y"), "data.user", "s=/p",
                   taken=(n for n in ("luna16", "demo")))
