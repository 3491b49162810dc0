"""Gradient transfer on multi-site prostate MRI (paper Table 4) end to end on its
`prostate_smoke` config and tiny NIfTI sites written here: pooled sources, 3-slice
inputs, slice budgets, Dice after the largest-component post-processing, both bounds and
best-on-validation models."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import run_train

CONFIG = "configs/transfer.py:prostate_smoke"


def write_site(site_dir, cases: int, seed: int) -> None:
  """`cases` volumes of 16 x 16 x 8 voxels: a bright box (the 'prostate') on slices
  2..6 over a noisy background, labels 1 and 2 inside it."""
  rng = np.random.default_rng(seed)
  os.makedirs(site_dir, exist_ok=True)
  for k in range(cases):
    image = rng.normal(100.0, 10.0, (16, 16, 8)).astype(np.float32)
    label = np.zeros((16, 16, 8), np.uint8)
    r, c = rng.integers(3, 7, size=2)
    label[r:r + 7, c:c + 6, 2:7] = 1
    label[r + 2:r + 4, c + 2:c + 4, 3:5] = 2
    image[label > 0] += 60.0 + 20.0 * seed
    affine = np.diag([0.6, 0.6, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), os.path.join(site_dir, f"Case{k:02d}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine),
             os.path.join(site_dir, f"Case{k:02d}_segmentation.nii.gz"))


@pytest.fixture(scope="module")
def prostate_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("saml")
  for seed, site in enumerate(("RUNMC", "BMC", "HCRUDB")):
    write_site(root / site, 3, seed)  # 1 test, 1 validation, 1 training subject each
  workdir = tmp_path_factory.mktemp("prostate_run")
  proc = run_train(workdir, f"--config.data.root={root}", config=CONFIG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_prostate_smoke_reports_dice_with_both_bounds(prostate_run):
  workdir, proc = prostate_run
  final = json.loads(proc.stdout)
  for col in ("none", "fta", "octl", "mmtl", "upper"):
    assert f"target_dice/adam/4/{col}" in final
  assert "source_dice/adam/4/upper" not in final  # no source side for the upper bound
  results = json.loads((workdir / "transfer_results.json").read_text())
  src, tgt = "RUNMC+BMC", "HCRUDB"
  for method in ("fta", "octl", "mmtl"):
    run = results[f"adam/{src}->{tgt}/4/{method}/0"]
    assert run["target_slices"] == 4  # the budget's slices, not the subject's
    assert {"dice", "dice_raw", "sdice"} <= set(run["target"])
    assert run["source"] is not None  # the pooled source's test subjects
  assert results[f"adam/{tgt}/target_model/0"]["source"] is None
  md = (workdir / "results.md").read_text()
  assert "Target-site test Dice x100" in md and "| upper |" in md
  assert "largest 3-D connected component" in md and "(spec D7)" in md
  assert "best model on the target's validation subjects" in md
  assert "six-site prostate MRI" in md
  stages = {json.loads(l)["stage"] for l in (workdir / "metrics.jsonl").read_text().splitlines()}
  # One source model of the pooled sites, one of the target (the upper bound).
  assert f"pretrain_adam_{src}_seed0" in stages and f"pretrain_adam_{tgt}_seed0" in stages
