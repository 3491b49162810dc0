"""SISSI end to end on its smoke config: the table, the figure and the versioned
pseudo-labels, a kill -9 during self-training resumed to the same results, the NaN stop,
and one-line input errors."""

import json

import numpy as np
import pytest

from conftest import config_with, kill_after_checkpoint, run_train, shared_run

CONFIG = "configs/sissi.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"

sissi_run = shared_run(CONFIG, name="sissi_run")


def test_smoke_writes_the_table_figure_and_pseudo_label_versions(sissi_run):
  workdir, proc = sissi_run
  final = json.loads(proc.stdout)
  assert set(final) == {f"consensus/{p}/{m}" for p in ("baseline", "a_sissi_w")
                        for m in ("AP50", "AP75", "AP", "AR")}
  assert all(0.0 <= v <= 100.0 for v in final.values())
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md and "Faster R-CNN substituted" in md
  assert "| Baseline (mixed batch) |" in md and "| A + SISSI (W) |" in md
  runs = json.loads((workdir / "sissi_runs.json").read_text())
  assert set(runs) == {f"{p}/{s}" for p in ("baseline", "a_sissi_w") for s in (0, 1)}
  table = json.loads((workdir / "results.json").read_text())["table"]["consensus"]
  per_seed = [runs[f"a_sissi_w/{s}"]["consensus"]["AP50"] for s in (0, 1)]
  assert table["a_sissi_w"]["AP50"] == pytest.approx([np.mean(per_seed), np.std(per_seed), 2])
  # forced start at epoch 2: pseudo-label versions 2 and 3 kept; the baseline never corrects
  assert runs["a_sissi_w/0"]["start_epoch"] == 2 and runs["a_sissi_w/0"]["pseudo_version"] == 3
  assert runs["baseline/0"]["start_epoch"] is None and runs["baseline/0"]["pseudo_version"] == 0
  assert sorted(p.name for p in (workdir / "pseudo" / "a_sissi_w_0").iterdir()) == [
      "v0002.json", "v0003.json"]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r["stage"] == "a_sissi_w/0"]
  assert [r["pseudo_version"] for r in epochs] == [0, 2, 3]
  assert (workdir / "sissi_detections.png").read_bytes()[:8] == PNG
  assert not list((workdir / "checkpoints" / "runs").glob("*"))  # recorded runs drop theirs


def test_killed_during_self_training_resumes_to_the_same_results(sissi_run, tmp_path):
  reference, _ = sissi_run
  killed = tmp_path / "killed"
  args = ("--config.seeds=(0,)", "--config.sissi.pipelines=('a_sissi_w',)")
  child = run_train(killed, *args, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "checkpoints" / "runs" / "a_sissi_w_0")
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "sissi_runs.json").read_text())["a_sissi_w/0"]
  want = json.loads((reference / "sissi_runs.json").read_text())["a_sissi_w/0"]
  assert got["pseudo_version"] == want["pseudo_version"] and got["n_pseudo"] == want["n_pseudo"]
  for m in ("AP50", "AP75", "AP", "AR"):
    np.testing.assert_allclose(got["consensus"][m], want["consensus"][m], atol=1e-3)
  for v in ("v0002.json", "v0003.json"):
    np.testing.assert_allclose(
        np.concatenate([np.reshape(b, (-1, 4)) for b in json.loads(
            (killed / "pseudo" / "a_sissi_w_0" / v).read_text())]),
        np.concatenate([np.reshape(b, (-1, 4)) for b in json.loads(
            (reference / "pseudo" / "a_sissi_w_0" / v).read_text())]), atol=1e-3)


def test_a_diverging_run_stops_with_exit_3(sissi_run, tmp_path):
  del sissi_run  # after it: its compiled steps are in the cache
  workdir = tmp_path / "nan"
  proc = run_train(workdir, "--config.seeds=(0,)", "--config.sissi.pipelines=('baseline',)",
                   "--config.train.learning_rate=1e38", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "non-finite" in proc.stderr.strip().splitlines()[-1]
  assert not (workdir / "results.md").exists()


def test_a_bad_user_manifest_ends_with_one_error_line(tmp_path):
  (tmp_path / "t.csv").write_text("image,x1,y1,x2,y2\nnowhere.png,0,0,4,4\n")
  proc = run_train(tmp_path / "bad", "--config.data.target=user",
                   f"--config.data.user=('mine={tmp_path / 't.csv'}',)",
                   f"--config.data.user_test=('r1={tmp_path / 't.csv'}',)",
                   config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "nowhere.png named in the data does not exist" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("field, value, message", [
    ("train.batch_size", 5, "must be even"),
    ("data.size", 48, "divisible by 32"),
    ("sissi.pipelines", ("mine",), "config.sissi.pipelines"),
    ("sissi.blur_strong", (12, 32.0), "odd kernel size"),
    ("data.source", "cellpose", "config.data.cellpose_root"),
    ("data.target", "user", "config.data.user must be one"),
])
def test_config_mistakes_are_named(field, value, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import sissi
  c = config_with(CONFIG, field, value)
  with pytest.raises(ConfigError, match=message):
    sissi.validate(c)
