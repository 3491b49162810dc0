"""The per-user cache: where it lives, and that a demo collection is built once per user
rather than once per workdir, while a configured cache_dir still wins."""

import pathlib

from medda_jax import files
from medda_jax.data import demo_skull
from medda_jax.methods import avagrad
from configs import avagrad as avagrad_config


def test_user_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.delenv("MEDDA_JAX_CACHE", raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert files.user_cache_dir("xla") == tmp_path / "home" / ".cache" / "medda_jax" / "xla"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert files.user_cache_dir("demo") == tmp_path / "xdg" / "medda_jax" / "demo"
  monkeypatch.setenv("MEDDA_JAX_CACHE", str(tmp_path / "mine"))
  assert files.user_cache_dir("demo") == tmp_path / "mine" / "demo"
  assert files.demo_cache_dir("") == tmp_path / "mine" / "demo"
  assert files.demo_cache_dir(str(tmp_path / "set")) == tmp_path / "set"
  assert files.data_cache_dir("", tmp_path / "run") == tmp_path / "run" / "cache"
  assert files.data_cache_dir(str(tmp_path / "set"), tmp_path / "run") == tmp_path / "set"


def test_demo_data_is_built_once_per_user_not_per_workdir(tmp_path, monkeypatch):
  monkeypatch.setenv("MEDDA_JAX_CACHE", str(tmp_path / "user"))
  c = avagrad_config.get_config("smoke")
  first = avagrad.load_domains(c, tmp_path / "run1")
  built = list((tmp_path / "user" / "demo").glob("demo_skull_*.npz"))
  assert len(built) == 1 and not (tmp_path / "run1" / "cache").exists()

  def no_build(*args, **kwargs):
    raise AssertionError("the demo was built again")

  with monkeypatch.context() as m:
    m.setattr(demo_skull, "_build_volume", no_build)
    second = avagrad.load_domains(c, tmp_path / "run2")  # another workdir: read back
  assert sorted(second.domains) == sorted(first.domains)
  for name, vols in first.domains.items():
    for a, b in zip(vols, second.domains[name]):
      assert (a.image == b.image).all() and (a.mask == b.mask).all()
  c.data.cache_dir = str(tmp_path / "configured")  # a configured cache wins: built there
  avagrad.load_domains(c, tmp_path / "run3")
  assert len(list(pathlib.Path(c.data.cache_dir).glob("demo_skull_*.npz"))) == 1
