"""The engine's resumable pieces shared by every method: the run table of a sweep's
finished runs, the last two checkpoints of a stage with a fallback past an unreadable
newest one, and a metrics file that survives an append cut short by a kill."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import checkpoint_steps
from medda_jax.engine import writers
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.runtable import RunTable
from medda_jax.errors import MeddaError


def test_run_table_records_skips_and_reads_back(tmp_path):
  path = tmp_path / "results.json"
  table = RunTable(path)
  assert not table.done("a/1")
  table.record("a/1", {"iou": 1.5})
  table.record("b/2", {"iou": 2.5})
  assert json.loads(path.read_text()) == {"a/1": {"iou": 1.5}, "b/2": {"iou": 2.5}}
  again = RunTable(path)  # a rerun sees what the killed one finished
  assert again.done("a/1") and again.done("b/2") and not again.done("c/3")
  assert again.get("b/2") == {"iou": 2.5}
  assert list(again.runs) == ["a/1", "b/2"]


def test_run_table_write_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  table = RunTable(path)
  table.record("a/1", 1)

  def killed(src, dst):  # the process dies after writing the temporary file
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    table.record("b/2", 2)
  assert json.loads(path.read_text()) == {"a/1": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("text", ['{"a/1": {"iou": 1.', "[1, 2]"])
def test_corrupt_run_table_is_one_error_line(tmp_path, text):
  path = tmp_path / "results.json"
  path.write_text(text)
  with pytest.raises(MeddaError) as e:
    RunTable(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def _state(k):
  return {"w": jnp.full((3, 2), float(k)), "b": jnp.arange(4.0) + k}


def _save(directory, steps):
  ckpt = Checkpointer(directory)
  for k in steps:
    ckpt.save(k, _state(k), {"calls": k})
  ckpt.close()


def _damage(step_dir: pathlib.Path):
  """Truncates every data file of the step's state, as a kill or a full disk would."""
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_two_checkpoints_kept_for_every_stage(tmp_path):
  _save(tmp_path / "c", [1, 2, 3])
  assert sorted(checkpoint_steps(tmp_path / "c")) == [2, 3]
  with pytest.raises(TypeError):  # no stage may keep fewer: nothing to fall back to
    Checkpointer(tmp_path / "d", max_to_keep=1)


def test_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
  _save(tmp_path / "c", [1, 2])
  _damage(tmp_path / "c" / "2")
  ckpt = Checkpointer(tmp_path / "c")
  state, extra = ckpt.restore(_state(0))
  ckpt.close()
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  np.testing.assert_array_equal(state["b"], _state(1)["b"])
  assert extra["calls"] == 1
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("warning: ")]
  assert len(warnings) == 1 and "step 2" in warnings[0] and "step 1" in warnings[0], warnings
  # The damaged step is gone, so the resumed run can save at its step number again.
  assert checkpoint_steps(tmp_path / "c") == [1]
  _save(tmp_path / "c", [2])
  ckpt = Checkpointer(tmp_path / "c")
  state, _ = ckpt.restore(_state(0))
  ckpt.close()
  np.testing.assert_array_equal(state["w"], _state(2)["w"])


def test_no_readable_checkpoint_is_one_error_line(tmp_path):
  _save(tmp_path / "c", [1, 2])
  for step in ("1", "2"):
    _damage(tmp_path / "c" / step)
  ckpt = Checkpointer(tmp_path / "c")
  with pytest.raises(MeddaError) as e:
    ckpt.restore(_state(0))
  ckpt.close()
  assert "no readable checkpoint" in str(e.value) and "\n" not in str(e.value)
  assert sorted(checkpoint_steps(tmp_path / "c")) == [1, 2]  # nothing removed


def test_metrics_line_cut_short_is_skipped_and_not_glued_to_the_next(tmp_path, capsys):
  writer = writers.MetricWriter(tmp_path)
  writer.write("s", 1, {"loss": 1.0})
  writer.write("s", 2, {"loss": 2.0})
  writer.close()
  path = tmp_path / "metrics.jsonl"
  whole = path.read_bytes()
  path.write_bytes(whole[:-9])  # killed during the second append
  assert writers.read_metrics(tmp_path) == [{"stage": "s", "step": 1, "loss": 1.0}]
  assert "unfinished line" in capsys.readouterr().err
  writer = writers.MetricWriter(tmp_path)  # the resumed run appends again
  writer.write("s", 2, {"loss": 2.0})
  writer.close()
  assert path.read_bytes() == whole
  assert [r["step"] for r in writers.read_metrics(tmp_path)] == [1, 2]


def test_metric_writer_leaves_an_installed_torch_unimported(tmp_path):
  """tensorboardX imports torch whenever it is installed (1.3 s of every run's start); the
  writer hides it while tensorboardX loads, and a later `import torch` still works. A stand-in
  torch package marks a file when it is imported."""
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  marker = tmp_path / "torch_imported"
  (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('x')\nTensor = object\n")
  script = (
      "import sys, pathlib\n"
      "from medda_jax.engine import writers\n"
      f"w = writers.MetricWriter({str(tmp_path / 'run')!r})\n"
      "w.write('s', 1, {'loss': 0.5}); w.close()\n"
      f"print('before', pathlib.Path({str(marker)!r}).exists())\n"
      "import torch\n"
      f"print('after', pathlib.Path({str(marker)!r}).exists())\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / "site"), str(pathlib.Path(__file__).parents[1]),
       os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu")
  (tmp_path / "run").mkdir()
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["before", "False", "after", "True"]
  assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
  assert writers.read_metrics(tmp_path / "run") == [{"stage": "s", "step": 1, "loss": 0.5}]
