"""Fair melanoma end to end on its smoke config: the table, labeller table and figure, a
kill -9 during training resumed to the same results, the NaN stop, and one-line input
errors."""

import json

import numpy as np
import pytest

from conftest import config_with, error_message, kill_after_checkpoint, run_train, shared_run

CONFIG = "configs/melanoma.py:smoke"
METHODS = ("baseline", "clgr")  # the smoke config's (each rule is checked in test_melanoma.py)
PNG = b"\x89PNG\r\n\x1a\n"

melanoma_run = shared_run(CONFIG, name="melanoma_run", demo_data=True)


def test_smoke_writes_the_tables_and_the_figure(melanoma_run):
  workdir, proc = melanoma_run
  final = json.loads(proc.stdout)
  for m in METHODS:
    for col in ("held-out", "types 3&4", "types 5&6", "OOD demo_dim"):
      assert 0.0 <= final[f"auc/{m}/{col}"] <= 1.0
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md and "random initialisation" in md
  assert "| method | held-out | types 3&4 | types 5&6 | gap | OOD demo_dim |" in md
  for title in ("Baseline", "CLGR"):
    assert md.count(f"| {title} |") == 1
  assert "| LNTL |" not in md
  assert "| hair removal (paper) |" in md and "| no hair removal |" in md
  runs = json.loads((workdir / "melanoma_runs.json").read_text())
  assert set(runs) == {f"{m}/{s}" for m in METHODS for s in (0, 1)}
  result = json.loads((workdir / "results.json").read_text())
  for m in METHODS:
    per_seed = [runs[f"{m}/{s}"]["groups"]["types 3&4"] for s in (0, 1)]
    assert result["table"][m]["types 3&4"][:3] == pytest.approx(
        [np.mean(per_seed), np.std(per_seed), 2])
    gaps = [runs[f"{m}/{s}"]["groups"]["types 3&4"] - runs[f"{m}/{s}"]["groups"]["types 5&6"]
            for s in (0, 1)]
    assert result["table"][m]["gap"][0] == pytest.approx(np.mean(gaps))
  labeller = result["labeller"][0]
  assert labeller["images"] == sum(map(sum, labeller["confusion"])) > 0
  assert (workdir / "group_auc.png").read_bytes()[:8] == PNG
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any(r["stage"] == "clgr/0" and "bias" in r and "debias" in r for r in records)
  assert not list((workdir / "checkpoints").glob("*/[0-9]*"))  # recorded runs drop theirs


def test_killed_during_training_resumes_to_the_same_results(melanoma_run, tmp_path, demo_cache):
  reference, _ = melanoma_run
  killed = tmp_path / "killed"
  args = (f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)")
  child = run_train(killed, *args, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "checkpoints" / "clgr_seed0")
  assert not (killed / "results.md").exists()
  assert set(json.loads((killed / "melanoma_runs.json").read_text())) == {"baseline/0"}
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "melanoma_runs.json").read_text())
  want = json.loads((reference / "melanoma_runs.json").read_text())
  assert set(got) == {f"{m}/0" for m in METHODS}
  for key, run in got.items():
    flat = lambda r: [r["held_out"], *r["groups"].values(), *r["ood"].values()]  # noqa: E731
    np.testing.assert_allclose(flat(run), flat(want[key]), atol=1e-4, err_msg=key)


def test_a_diverging_run_stops_with_exit_3(melanoma_run, tmp_path, demo_cache):
  del melanoma_run  # after it: its compiled steps are in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)",
                   "--config.methods=('baseline',)", "--config.optim.lr_scale=1e30",
                   config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()


def _bad_csv(tmp_path, text):
  from PIL import Image
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  path = tmp_path / "mine.csv"
  path.write_text(text)
  return f"--config.data.user=('mine={path}',)"


@pytest.mark.parametrize("case, message", [
    ("no_label", "lacks column(s) ['label']"),
    ("missing_file", "nowhere.png, which does not exist"),
    ("threshold", "config.ita.thresholds"),
    ("ood", "domain 'atlas' (config.data.train / config.data.ood) is not in the data"),
])
def test_input_mistakes_end_with_one_error_line(tmp_path, demo_cache, case, message):
  overrides = {  # built only for this case: each writes its own manifest
      "no_label": lambda: [_bad_csv(tmp_path, "path,diagnosis\na.png,benign\n"),
                           "--config.data.ood=('mine',)"],
      "missing_file": lambda: [_bad_csv(tmp_path, "path,label\na.png,benign\n"
                                        "nowhere.png,malignant\n"), "--config.data.ood=('mine',)"],
      "threshold": lambda: ["--config.ita.thresholds=(55.0,'forty',28.0,19.0,10.0)"],
      "ood": lambda: ["--config.data.ood=('atlas',)"],
  }[case]()
  proc = run_train(tmp_path / "bad", f"--config.data.cache_dir={demo_cache}", *overrides,
                   config=CONFIG, timeout=300)
  assert message in error_message(proc).splitlines()[0]


@pytest.mark.parametrize("field, value, message", [
    ("methods", ("baseline", "dann"), "config.methods has unknown entries"),
    ("ita.thresholds", (10.0, 20.0, 30.0, 40.0, 50.0), "five decreasing"),
    ("data.train_types", (0, 1), "config.data.train_types"),
    ("bias.labels", "doctor", "config.bias.labels"),
    ("debias.confusion_target", "gaussian", "config.debias.confusion_target"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import melanoma_fairness
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message):
    melanoma_fairness.validate(c)
