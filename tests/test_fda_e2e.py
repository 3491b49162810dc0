"""Fourier domain adaptation end to end on its smoke config: the Table-2 table, the figures,
the similarity cache, resumption after kill -9, the NaN stop and bad inputs."""

import json

import numpy as np
import pytest

from conftest import checkpoint_steps, kill_after_checkpoint, run_train, set_fields, shared_run

CONFIG = "configs/fda.py:smoke"
PNG = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["no_da"] + [f"{m}/{s}" for s in ("avg", "pair")
                       for m in ("single", "mst", "srsim_3d", "srsim_2.5d", "srsim_2d")]

fda_run = shared_run(CONFIG, name="fda_run", demo_data=True)


def test_smoke_writes_the_table_figures_and_similarity_cache(fda_run):
  workdir, proc = fda_run
  final = json.loads(proc.stdout)
  for col in COLUMNS:
    assert 0.0 <= final[f"sdice/average/{col}"] <= 1.0
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md
  assert "| severe | site_a_clean->site_f_inverted |" in md
  assert "| subtle | site_a_clean->site_b_gamma_dark |" in md and "**average**" in md
  table = json.loads((workdir / "results.json").read_text())["table"]
  assert table["columns"] == COLUMNS
  assert all(cell["sdice"][2] == 2 for row in table["rows"] for cell in row["cells"].values())
  runs = json.loads((workdir / "fda_runs.json").read_text())
  assert len(runs) == 2 * 2 * 2  # (val, test) x 2 pairs x 2 seeds
  # the selected betas come from the grid, and each test run used them
  for key, run in runs.items():
    if key.startswith("test/"):
      for setting in ("avg", "pair"):
        assert {run[setting][m]["beta"] for m in run[setting]} <= {0.05, 0.15}
  for name in ("beta_curve.png", "restyled.png"):
    assert (workdir / name).read_bytes()[:8] == PNG
  tables = sorted((workdir / "similarity").glob("*.npz"))
  assert len(tables) == 4  # two target test + validation scans per target site, one source
  with np.load(tables[0]) as f:
    t = f["table"]
    assert t.ndim == 3 and t.shape[1:] == (2, 3)  # 2 source training scans, offsets -1..1
    assert np.nanmax(t) <= 1.0 + 1e-6 and np.isnan(t[0, :, 0]).all()
  donors = json.loads(tables[0].with_name(tables[0].stem + "_donors.json").read_text())
  assert set(donors["donors"]) == {"3d", "2.5d", "2d"}


def _leaves(tree, prefix=""):
  """A run's record as {path: leaf}, every leaf of its nested dicts and lists."""
  items = tree.items() if isinstance(tree, dict) else enumerate(tree)
  out = {}
  for key, value in items:
    if isinstance(value, (dict, list)):
      out.update(_leaves(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def test_killed_run_resumes_to_the_same_table(fda_run, tmp_path, demo_cache):
  # The first seed of the smoke config (its source model, sweeps and tests are independent
  # of the other seed's), killed after its first pre-training checkpoint and rerun: every
  # run's betas and scores equal the uninterrupted reference's same run.
  reference, _ = fda_run
  killed = tmp_path / "killed"
  args = [f"--config.data.cache_dir={demo_cache}", "--config.seeds=(0,)"]
  child = run_train(killed, *args, config=CONFIG, background=True)
  kill_after_checkpoint(child, killed / "checkpoints" / "pretrain_sgd_site_a_clean_seed0")
  assert not (killed / "results.md").exists()
  proc = run_train(killed, *args, config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (killed / "results.md").exists()
  got = json.loads((killed / "fda_runs.json").read_text())
  want = {k: v for k, v in json.loads((reference / "fda_runs.json").read_text()).items()
          if k.endswith("/seed0")}
  assert got.keys() == want.keys() and len(got) == 2 * 2  # (val, test) x 2 pairs
  for key in got:
    g, w = _leaves(got[key]), _leaves(want[key])
    assert g.keys() == w.keys() and len(g) > 10, key
    numbers = sorted(k for k, v in w.items() if isinstance(v, (int, float)))
    assert {k: g[k] for k in w if k not in numbers} == {k: w[k] for k in w if k not in numbers}
    np.testing.assert_allclose([g[k] for k in numbers], [w[k] for k in numbers],
                               rtol=1e-4, atol=1e-4, err_msg=key)


def test_nan_loss_stops_with_exit_3(fda_run, tmp_path, demo_cache):
  del fda_run  # after it: its compiled training step is in the cache (the rate is state)
  workdir = tmp_path / "nan"
  proc = run_train(workdir, f"--config.data.cache_dir={demo_cache}",
                   "--config.pretrain.learning_rate=1e12", config=CONFIG)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert "non-finite" in last and "pretrain_sgd_site_a_clean_seed0" in last
  assert not (workdir / "results.md").exists()
  # it diverged in its first call: nothing non-finite was saved as a checkpoint
  assert checkpoint_steps(workdir / "checkpoints" / "pretrain_sgd_site_a_clean_seed0") == []


def smoke_config(**fields):
  from medda_jax.config_utils import load_config
  return set_fields(load_config(CONFIG), fields)


@pytest.mark.parametrize("fields, message", [
    ({"fda.window": "hexagon"}, "config.fda.window='hexagon' is not allowed"),
    ({"fda.methods": ("mst", "srsim_4d")}, "config.fda.methods has unknown entries ['srsim_4d']"),
    ({"fda.betas": (0.01, 0.9)}, "config.fda.betas entry 0.9 must be a number in [0, 0.5]"),
    ({"data.pairs": (("site_a_clean", "nowhere"),)}, "config.data.severity must give"),
    ({"data.source": "cc359"}, "config.data.root must name the CC359 folder"),
])
def test_config_mistakes_are_named_before_anything_runs(fields, message):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import fda
  with pytest.raises(ConfigError) as e:
    fda.validate(smoke_config(**fields))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_pair_naming_a_missing_site_is_named(tmp_path, demo_cache):
  from medda_jax.errors import ConfigError
  from medda_jax.methods import fda
  c = smoke_config(**{"data.pairs": (("site_a_clean", "nowhere"),), "data.severity": ("severe",),
                      "data.cache_dir": str(demo_cache)})
  fda.validate(c)
  with pytest.raises(ConfigError, match="site 'nowhere' in config.data.pairs is not in the data"):
    fda.train_and_evaluate(c, tmp_path / "bad")
  assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_missing_data_root_ends_with_one_error_line(tmp_path):
  proc = run_train(tmp_path / "bad", "--config.data.source=cc359",
                   f"--config.data.root={tmp_path / 'no_such_folder'}", config=CONFIG,
                   timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "config.data.root=" in last and "is not a folder" in last


def test_your_own_sites_from_a_csv_manifest(tmp_path):
  """Two sites of a user's CSV manifest (its site column), no built-in data: the table
  names them and carries no demo label."""
  import nibabel as nib

  from medda_jax.methods import fda
  rng = np.random.default_rng(0)
  rows = ["image,label,subject,site"]
  for i in range(4):
    image = np.zeros((16, 16, 6), np.float32)
    image[3:13, 3:13] = rng.uniform(100, 200 if i < 2 else 400, size=(10, 10, 6))
    label = np.zeros((16, 16, 6), np.uint8)
    label[5:11, 5:11] = 1
    for kind, array in (("img", image), ("seg", label)):
      nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / f"{kind}{i}.nii.gz"))
    rows.append(f"img{i}.nii.gz,seg{i}.nii.gz,p{i},{'a' if i < 2 else 'b'}")
  (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
  c = smoke_config(**{"data.source": "none", "data.user": (f"mine={tmp_path / 'mine.csv'}",),
                      "data.user_modality": "MR", "data.pairs": (("mine_a", "mine_b"),),
                      "data.severity": ("mine",), "seeds": (0,)})
  fda.validate(c)
  final = fda.train_and_evaluate(c, tmp_path / "run")
  assert 0.0 <= final["sdice/average/srsim_2.5d/avg"] <= 1.0
  md = (tmp_path / "run" / "results.md").read_text()
  assert "your sites: mine_a, mine_b" in md and "DEMO DATA" not in md
  assert "| mine | mine_a->mine_b |" in md
