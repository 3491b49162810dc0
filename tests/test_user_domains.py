"""A user's own image folders and CSVs as domains of the WGAN and StarGAN methods, from the
command line: results carry the user's names and no demo disclaimer."""

import json

import numpy as np
import pytest

from conftest import run_train
from medda_jax.config_utils import load_config
from medda_jax.data import images
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods import stargan_da, wgan_aug
from test_images import write_csv, write_folder

WGAN = "configs/wgan_synth.py:smoke"
STARGAN = "configs/stargan.py:smoke"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
  """A grey class folder of three classes (the BUSI shape) and a colour CSV with patients."""
  root = tmp_path_factory.mktemp("user_data")
  folder = write_folder(root / "our_us", {"benign": 30, "malignant": 30, "normal": 15})
  counts = {"benign": 24, "malignant": 24, "normal": 12}
  write_folder(root / "clinic", counts, colour=True, suffix=".jpg", seed=1)
  rows = [(f"clinic/{c}/{i}.jpg", c, f"{c}{i // 2}") for c, n in counts.items() for i in range(n)]
  return folder, write_csv(root / "clinic_b.csv", rows)


# --------------------------------------------------------------------------- config level
def test_wgan_codes_user_classes_as_the_papers_two_labels(hospital):
  folder, _ = hospital
  c = load_config(WGAN)
  table = images.load_table("ours", folder)
  with pytest.raises(DataError, match="has 3 classes"):
    wgan_aug.binary_table(c, table)
  c.data.positive_classes = ("benign", "normal")
  c.data.negative_classes = ("malignant",)
  coded, names = wgan_aug.binary_table(c, table)
  assert names == {1: "benign+normal", 0: "malignant"}
  assert np.bincount(coded.labels).tolist() == [30, 45]
  c.data.negative_classes = ("cancer",)
  with pytest.raises(DataError, match="no class 'cancer'"):
    wgan_aug.binary_table(c, table)


def test_wgan_validate_accepts_name_path_and_rejects_half_a_class_mapping():
  c = load_config(WGAN)
  c.data.source = "ours=/data/x"
  c.data.targets = ("mnist_m", "clinic_b=/data/b.csv")
  wgan_aug.validate(c)
  assert wgan_aug.domain_names(c).data.targets == ("mnist_m", "clinic_b")
  c.data.positive_classes = ("benign",)
  with pytest.raises(ConfigError, match="positive_classes"):
    wgan_aug.validate(c)


def test_stargan_validate_and_pairs_use_user_names():
  c = load_config(STARGAN)
  c.data.domains = ("mnist", "ours=/data/x")
  c.pairs = ("ours->mnist",)
  stargan_da.validate(c)
  assert stargan_da.ordered_pairs(c) == [("ours", "mnist")]
  c.pairs = ()
  assert stargan_da.ordered_pairs(c) == [("mnist", "ours"), ("ours", "mnist")]
  c.pairs = ("ours=/data/x->mnist",)
  with pytest.raises(ConfigError, match="config.pairs"):
    stargan_da.validate(c)


def test_stargan_user_domains_must_share_their_classes(hospital, tmp_path):
  folder, csv_path = hospital
  c = load_config(STARGAN)
  other = write_folder(tmp_path / "other", {"benign": 4, "cancer": 4})
  c.data.domains = (f"a={folder}", f"b={other}")
  c.data.split = (0.5, 0.25, 0.25)
  with pytest.raises(DataError, match="needs the same classes"):
    stargan_da.num_classes(c, stargan_da.load_domains(c))
  c.data.domains = (f"a={folder}", f"b={csv_path}")
  domains = stargan_da.load_domains(c)
  assert stargan_da.num_classes(c, domains) == 3
  assert domains["b"].train.images.shape[1:] == (16, 16, 3)
  train = domains["b"].train.images[:]  # decoded on access
  assert -1.0 <= train.min() and train.max() <= 1.0


def test_stargan_user_split_missing_a_class_is_a_data_error(tmp_path):
  write_folder(tmp_path / "imgs", {"x": 1})
  rows = [("imgs/x/0.png", "ab"[p % 2], f"p{p}") for p in range(4) for _ in range(2)]
  c = load_config(STARGAN)
  c.data.domains = (f"a={write_csv(tmp_path / 'a.csv', rows)}", "mnist")
  c.data.split = (0.5, 0.25, 0.25)  # whole patients of one class: some split lacks a class
  with pytest.raises(DataError, match=r"split holds \d images of classes \['[ab]'\] only"):
    stargan_da.load_domains(c)


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def wgan_user_run(hospital, tmp_path_factory):
  folder, csv_path = hospital
  workdir = tmp_path_factory.mktemp("wgan_user")
  proc = run_train(workdir, f"--config.data.source=ourhospital={folder}",
                   f"--config.data.targets=('clinic_b={csv_path}',)",
                   "--config.data.positive_classes=('benign','normal')",
                   "--config.data.negative_classes=('malignant',)",
                   "--config.classifiers=('cnn_transformer',)", config=WGAN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_wgan_cli_on_a_user_folder_names_the_users_domains(wgan_user_run, hospital):
  workdir, proc = wgan_user_run
  final = json.loads(proc.stdout)
  assert "clinic_b_acc/cnn_transformer/0" in final
  md = (workdir / "results.md").read_text()
  results = json.loads((workdir / "results.json").read_text())
  for text in (md, results["label"], results["data"]):
    assert "ourhospital" in text and "clinic_b" in text
    assert "DEMO" not in text and "reproduction" not in text
    assert all(str(p) not in text for p in hospital)  # names, not paths
  assert "split by patient" not in results["data"]  # the folder has no patient column
  for png in ("samples_benign+normal.png", "samples_malignant.png", "ratio.png"):
    assert (workdir / png).read_bytes()[:4] == b"\x89PNG", png


@pytest.fixture(scope="module")
def stargan_user_run(hospital, tmp_path_factory):
  folder, csv_path = hospital
  workdir = tmp_path_factory.mktemp("stargan_user")
  proc = run_train(workdir, f"--config.data.domains=('ourhospital={folder}','clinic_b={csv_path}')",
                   "--config.pairs=('ourhospital->clinic_b',)", "--config.eval.spread_fractions=()",
                   "--config.data.split=(0.5,0.25,0.25)", config=STARGAN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_stargan_cli_on_user_domains_names_them(stargan_user_run):
  workdir, proc = stargan_user_run
  final = json.loads(proc.stdout)
  assert "adapted_auc/ourhospital->clinic_b" in final
  md = (workdir / "results.md").read_text()
  results = json.loads((workdir / "results.json").read_text())
  assert "ourhospital → clinic_b" in md and "3 classes ['benign', 'malignant', 'normal']" in md
  assert "DEMO" not in md and "paper |" not in md  # no disclaimer, no paper column
  assert results["classes"] == ["benign", "malignant", "normal"] and "paper" not in results
  assert set(results["internal"]) == {"ourhospital", "clinic_b"}
  assert (workdir / "translations_ourhospital_to_clinic_b.png").exists()


def test_empty_class_folder_ends_with_one_error_line(tmp_path):
  root = write_folder(tmp_path / "ours", {"a": 2, "b": 2})
  (root / "c").mkdir()
  proc = run_train(tmp_path / "w", f"--config.data.source=ours={root}",
                   "--config.data.positive_classes=('a',)", "--config.data.negative_classes=('b',)",
                   config=WGAN, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and str(root / "c") in last
