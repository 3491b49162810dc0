"""DiRA's transfer targets (methods/dira/targets.py): NCC, LCS, BMS and manifest crops
checked against plain code on tiny LUNA16 / LiTS / BraTS / manifest fixtures."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import data_error
from medda_jax.data import ct_sets, metaimage
from medda_jax.errors import ConfigError
from medda_jax.methods.dira import targets
from medda_jax.methods.dira.volumes import normalise

S = 8


def write_nifti(path, zyx: np.ndarray):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.eye(4)),
           str(path))


def ball(shape, centre, radius) -> np.ndarray:
  z, y, x = np.indices(shape)
  return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2


def locate(volume: np.ndarray, cube: np.ndarray) -> list[tuple[int, int, int]]:
  """Every corner (possibly negative) where `cube` equals `volume` padded with its min."""
  s = cube.shape[0]
  fill = volume.min()
  padded = np.pad(volume, s, constant_values=fill)
  inside = np.argwhere(cube != fill)
  if inside.size == 0:
    return []
  o = inside[0]
  found = []
  for p in np.argwhere(padded == cube[tuple(o)]):
    c = p - o
    if np.all(c >= 0) and np.all(c + s <= padded.shape):
      if np.array_equal(padded[c[0]:c[0] + s, c[1]:c[1] + s, c[2]:c[2] + s], cube):
        found.append(tuple(int(v) for v in c - s))
  return found


def plain_cut(volume, corner, s, fill):
  padded = np.pad(volume, s, constant_values=fill)
  c = np.asarray(corner) + s
  return padded[c[0]:c[0] + s, c[1]:c[1] + s, c[2]:c[2] + s]


# ---------------------------------------------------------------------------------------------
# NCC: LUNA16

SPACING, ORIGIN = (1.5, 1.0, 0.8), (-10.0, -20.0, -30.0)  # (z, y, x)
# scan uid -> (subset, [(voxel z, y, x), class] ...)
LUNA = {
    "1.1": (0, [((5, 6, 7), 1), ((12, 12, 12), 1), ((3, 20, 9), 0), ((20, 2, 2), 0),
                ((10, 10, 22), 0), ((15, 5, 18), 0), ((0, 0, 0), 0)]),
    "1.2": (3, [((4, 4, 4), 0), ((8, 8, 8), 0), ((12, 6, 3), 0)]),   # no nodule: skipped
    "1.3": (6, [((11, 13, 9), 1)]),                                  # no negative to draw
    "1.4": (8, [((2, 22, 14), 1), ((9, 9, 9), 0), ((16, 3, 7), 0), ((6, 18, 20), 0),
                ((21, 21, 1), 0)]),
}


def make_luna(root):
  rng = np.random.default_rng(1)
  volumes, rows = {}, ["seriesuid,coordX,coordY,coordZ,class"]
  for uid, (subset, candidates) in LUNA.items():
    (root / f"subset{subset}").mkdir(parents=True, exist_ok=True)
    volumes[uid] = rng.normal(-200, 400, (24, 24, 24)).astype(np.float32)
    metaimage.write_mhd(root / f"subset{subset}" / f"{uid}.mhd", volumes[uid], SPACING, ORIGIN)
    for (z, y, x), cls in candidates:
      world = np.add(ORIGIN, np.multiply((z, y, x), SPACING))[::-1]
      rows.append(f"{uid},{world[0]:.4f},{world[1]:.4f},{world[2]:.4f},{cls}")
  (root / "candidates_V2.csv").write_text("\n".join(rows) + "\n")
  return volumes


def ncc_expected(volumes, uid):
  """uid's candidate crops as plain code cuts them: [(class, cube)]."""
  out = []
  for (z, y, x), cls in LUNA[uid][1]:
    world = np.add(ORIGIN, np.multiply((z, y, x), SPACING))[::-1]
    cube = ct_sets.candidate_crop(volumes[uid], SPACING, ORIGIN, world, S)
    out.append((cls, normalise(cube, "ct")))
  return out


def test_ncc_crops_are_the_split_candidates_all_nodules_and_as_many_drawn(tmp_path):
  volumes = make_luna(tmp_path)
  crops = list(targets.luna16_ncc(tmp_path, "train", S, 100, seed=3))
  # train = subset0-5: 1.1 gives its 2 nodules + 2 of its 5 others, 1.2 none
  assert len(crops) == 4 and [c[2] for c in crops].count(1) == 2
  expected = ncc_expected(volumes, "1.1")
  matched = []
  for cube, mask, label in crops:
    assert cube.dtype == np.float32 and cube.shape == (S,) * 3
    assert mask.dtype == np.uint8 and not mask.any()
    hits = [i for i, (cls, want) in enumerate(expected) if np.array_equal(cube, want)]
    assert len(hits) == 1 and expected[hits[0]][0] == label
    matched.append(hits[0])
  assert len(set(matched)) == 4 and {0, 1} <= set(matched)
  assert matched == sorted(matched)  # candidate-file order
  assert 0.0 <= min(c[0].min() for c in crops) and max(c[0].max() for c in crops) <= 1.0

  again = list(targets.luna16_ncc(tmp_path, "train", S, 100, seed=3))
  assert all(np.array_equal(a[0], b[0]) for a, b in zip(crops, again))
  draws = {tuple(np.round(c[0][0, 0, :2], 6).tobytes() for c in
                 targets.luna16_ncc(tmp_path, "train", S, 100, seed=s)) for s in range(6)}
  assert len(draws) > 1  # the negatives depend on the seed
  first3 = list(targets.luna16_ncc(tmp_path, "train", S, 3, seed=3))
  assert len(first3) == 3 and all(np.array_equal(a[0], b[0]) for a, b in zip(first3, crops))

  val = list(targets.luna16_ncc(tmp_path, "val", S, 100, seed=3))
  assert len(val) == 1 and val[0][2] == 1
  np.testing.assert_array_equal(val[0][0], ncc_expected(volumes, "1.3")[0][1])
  test = list(targets.luna16_ncc(tmp_path, "test", S, 100, seed=0))
  want = ncc_expected(volumes, "1.4")
  assert [c[2] for c in test].count(1) == 1 and len(test) == 2
  assert all(any(np.array_equal(c[0], w) for _, w in want) for c in test)


def test_ncc_errors(tmp_path):
  make_luna(tmp_path)
  with pytest.raises(ConfigError):
    targets.luna16_ncc(tmp_path, "valid", S, 10, 0)
  with pytest.raises(ConfigError):
    targets.luna16_ncc(tmp_path, "train", 0, 10, 0)
  for uid in ("1.4",):
    (tmp_path / "subset8" / f"{uid}.mhd").unlink()
  assert data_error(lambda: list(targets.luna16_ncc(tmp_path, "test", S, 10, 0))) == (
      f"LUNA16 folder {tmp_path} has no scan in subset8-9 (the test split)")


# ---------------------------------------------------------------------------------------------
# LCS: LiTS


def make_lits(root, n=4, shape=(28, 26, 24)):
  rng = np.random.default_rng(2)
  cases = {}
  for i in range(n):
    volume = rng.normal(0, 300, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    if i != 1:  # case 1: no liver at all
      labels[ball(shape, (8 + 3 * i, 14, 12), 5)] = 1
      labels[ball(shape, (8 + 3 * i, 14, 12), 2)] = 2
    write_nifti(root / f"volume-{i}.nii", volume)
    write_nifti(root / f"segmentation-{i}.nii", labels)
    cases[i] = (normalise(volume, "ct"), labels > 0)
  return cases


def check_segmentation_crops(crops, cases, per_volume):
  """Each crop is the normalised volume of exactly one case at one corner, its mask the
  foreground there; even crops of a volume with foreground hold some; returns case ids."""
  used = []
  for i, (cube, mask, label) in enumerate(crops):
    assert cube.dtype == np.float32 and cube.shape == (S,) * 3 and mask.dtype == np.uint8
    hits = [(case, corner) for case, (volume, _) in cases.items()
            for corner in locate(volume, cube)]
    assert len(hits) == 1, (i, hits)
    case, corner = hits[0]
    volume, fg = cases[case]
    np.testing.assert_array_equal(cube, plain_cut(volume, corner, S, volume.min()))
    np.testing.assert_array_equal(mask, plain_cut(fg, corner, S, False).astype(np.uint8))
    assert label == int(mask.sum() >= 20)
    if i % per_volume % 2 == 0 and fg.any():
      assert mask.any(), i
    if i % per_volume % 2 == 1:  # a random corner inside the volume
      assert all(0 <= c <= max(n - S, 0) for c, n in zip(corner, volume.shape)), corner
    used.append(case)
  return used


def test_lits_crops_are_the_volume_and_liver_at_their_corner(tmp_path):
  cases = make_lits(tmp_path)
  crops = list(targets.lits_lcs(tmp_path, "train", S, 10, seed=5, crops_per_volume=4))
  assert len(crops) == 10
  used = check_segmentation_crops(crops, cases, 4)
  # 4 cases: train = 0, 1; volumes visited whole (4 crops each), both in the first pass
  assert set(used) == {0, 1} and len({tuple(used[k:k + 4]) for k in (0, 4)}) == 2
  assert all(len(set(used[k:k + 4])) == 1 for k in (0, 4, 8))
  assert any(c[2] == 1 for c in crops) and any(c[2] == 0 for c in crops)
  again = list(targets.lits_lcs(tmp_path, "train", S, 10, seed=5, crops_per_volume=4))
  assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
             for a, b in zip(crops, again))
  other = list(targets.lits_lcs(tmp_path, "train", S, 10, seed=6, crops_per_volume=4))
  assert not all(np.array_equal(a[0], b[0]) for a, b in zip(crops, other))
  assert set(check_segmentation_crops(
      list(targets.lits_lcs(tmp_path, "val", S, 3, seed=0, crops_per_volume=2)), cases, 2)) == {2}
  assert set(check_segmentation_crops(
      list(targets.lits_lcs(tmp_path, "test", S, 3, seed=0)), cases, 8)) == {3}


def test_crops_crossing_the_border_are_padded_with_the_minimum(tmp_path):
  # a volume smaller than the cube: every crop is padded, foreground at the very edge
  shape = (6, 7, 5)
  rng = np.random.default_rng(3)
  cases = {}
  for i in range(3):
    volume = rng.normal(0, 300, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[0, 0, :2] = 1
    write_nifti(tmp_path / f"volume-{i}.nii", volume)
    write_nifti(tmp_path / f"segmentation-{i}.nii", labels)
    cases[i] = (normalise(volume, "ct"), labels > 0)
  crops = list(targets.lits_lcs(tmp_path, "train", S, 4, seed=0, crops_per_volume=4))
  check_segmentation_crops(crops, cases, 4)
  assert all(c[1].sum() <= 2 and c[2] == 0 for c in crops)


def test_case_splits_need_three_cases(tmp_path):
  assert targets.split_bounds(3, "x") == {"train": (0, 1), "val": (1, 2), "test": (2, 3)}
  assert targets.split_bounds(10, "x") == {"train": (0, 7), "val": (7, 8), "test": (8, 10)}
  assert targets.split_bounds(131, "x") == {"train": (0, 92), "val": (92, 105),
                                            "test": (105, 131)}
  for n in range(3, 40):
    bounds = targets.split_bounds(n, "x")
    assert bounds["train"][0] == 0 and bounds["test"][1] == n
    assert all(b > a for a, b in bounds.values())
  make_lits(tmp_path, n=2, shape=(10, 10, 10))
  assert data_error(lambda: list(targets.lits_lcs(tmp_path, "train", S, 4, 0))) == (
      f"LiTS folder {tmp_path} has 2 cases; a train / val / test split needs at least 3")


# ---------------------------------------------------------------------------------------------
# BMS: BraTS


def make_brats(root, n=3, shape=(24, 22, 20)):
  rng = np.random.default_rng(4)
  cases = {}
  for i in range(n):
    name = f"BraTS20_Training_{i:03d}"
    images = {m: rng.gamma(2.0, 100.0 * (k + 1), shape).astype(np.float32) + 1
              for k, m in enumerate(("flair", "t1", "t1ce", "t2"))}
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (12, 11, 10), 5)] = 2
    labels[ball(shape, (12, 11, 10), 3)] = 1
    labels[ball(shape, (12, 11, 10), 1)] = 4
    for m, data in images.items():
      write_nifti(root / name / f"{name}_{m}.nii.gz", data)
    write_nifti(root / name / f"{name}_seg.nii.gz", labels)
    cases[name] = (images, labels)
  return cases


def test_brats_crops_are_flair_and_the_whole_tumour(tmp_path):
  raw = make_brats(tmp_path)
  flair = {name: (normalise(images["flair"], "mr"), labels > 0)
           for name, (images, labels) in raw.items()}
  crops = list(targets.brats_bms(tmp_path, "train", S, 6, seed=1, crops_per_volume=4))
  assert len(crops) == 6
  assert set(check_segmentation_crops(crops, flair, 4)) == {"BraTS20_Training_000"}
  assert any(c[2] == 1 for c in crops)
  # no crop is cut from another modality, and the mask is not just one label value
  t1 = {name: (normalise(images["t1"], "mr"), labels > 0)
        for name, (images, labels) in raw.items()}
  assert not any(locate(t1[n][0], c[0]) for c in crops for n in t1)
  assert any(set(np.unique(plain_cut(raw["BraTS20_Training_000"][1],
                                     locate(flair["BraTS20_Training_000"][0], c[0])[0],
                                     S, 0))) >= {1, 2, 4} for c in crops)
  val = list(targets.brats_bms(tmp_path, "val", S, 2, seed=1))
  assert set(check_segmentation_crops(val, flair, 8)) == {"BraTS20_Training_001"}


# ---------------------------------------------------------------------------------------------
# manifests


def make_manifest(root, segmentation=True, split=None, n=4):
  rng = np.random.default_rng(5)
  shapes = [(12, 12, 12), (10, 14, 6), (16, 9, 11), (8, 8, 8), (13, 13, 13)]
  header = "image," + ("mask" if segmentation else "label") + (",split" if split else "")
  lines, arrays = [header], {}
  for i in range(n):
    volume = rng.normal(0, 300, shapes[i]).astype(np.float32)
    name = f"img{i}.nii.gz"
    write_nifti(root / "vols" / name, volume)
    row = f"vols/{name}"
    if segmentation:
      mask = ball(shapes[i], np.array(shapes[i]) // 2, 3).astype(np.uint8) * 3
      if i == 2:
        metaimage.write_mhd(root / "vols" / "mask2.mhd", mask, (1.0, 1.0, 1.0))
        row += ",vols/mask2.mhd"
      else:
        write_nifti(root / "vols" / f"mask{i}.nii", mask)
        row += f",vols/mask{i}.nii"
      arrays[name] = (normalise(volume, "ct"), mask > 0)
    else:
      row += f",{i % 2}"
      arrays[name] = (normalise(volume, "mr"), i % 2)
    if split:
      row += f",{split[i]}"
    lines.append(row)
  (root / "list.csv").write_text("\n".join(lines) + "\n")
  return root / "list.csv", arrays


def test_manifest_kind_and_segmentation_crops(tmp_path):
  path, arrays = make_manifest(tmp_path)
  assert targets.manifest_target(path) == "segmentation"
  crops = list(targets.manifest_crops(path, "train", S, 8, 0, "ct", crops_per_volume=2))
  # 4 rows sorted by image: train = img0, img1
  assert set(check_segmentation_crops(crops, arrays, 2)) == {"img0.nii.gz", "img1.nii.gz"}
  crops = list(targets.manifest_crops(path, "val", S, 3, 0, "ct", crops_per_volume=2))
  assert set(check_segmentation_crops(crops, arrays, 2)) == {"img2.nii.gz"}  # .mhd mask


def test_manifest_classification_is_the_centre_cube_and_split_column_overrides(tmp_path):
  path, arrays = make_manifest(tmp_path, segmentation=False, n=5,
                               split=("test", "train", "train", "val", "train"))
  assert targets.manifest_target(path) == "classification"
  crops = list(targets.manifest_crops(path, "train", S, 10, 0, "mr"))
  assert len(crops) == 3
  seen = set()
  for cube, mask, label in crops:
    assert not mask.any() and cube.shape == (S,) * 3
    name = next(n for n, (v, _) in arrays.items()
                if np.array_equal(cube, plain_cut(v, (np.array(v.shape) - S) // 2, S, v.min())))
    assert label == arrays[name][1]
    seen.add(name)
  assert seen == {"img1.nii.gz", "img2.nii.gz", "img4.nii.gz"}
  # img1 is (10, 14, 6): z rows 1-8, y rows 3-10, x padded one voxel on each side
  v1 = arrays["img1.nii.gz"][0]
  c1 = next(c[0] for c in crops if np.array_equal(c[0][1:-1, :, 1:-1], v1[2:8, 3:11, :]))
  assert np.all(c1[:, :, 0] == v1.min()) and np.all(c1[:, :, -1] == v1.min())
  assert len(list(targets.manifest_crops(path, "train", S, 2, 0, "mr"))) == 2
  assert len(list(targets.manifest_crops(path, "val", S, 10, 0, "mr"))) == 1


def test_manifest_errors_are_one_line(tmp_path):
  path, _ = make_manifest(tmp_path, n=4)
  text = path.read_text()
  (tmp_path / "noimage.csv").write_text(text.replace("image,mask", "picture,mask", 1))
  assert data_error(lambda: targets.manifest_target(tmp_path / "noimage.csv")) == (
      f"manifest {tmp_path / 'noimage.csv'} lacks column 'image' (columns: picture, mask)")
  (tmp_path / "nokind.csv").write_text("image,other\nvols/img0.nii.gz,1\n")
  assert data_error(lambda: targets.manifest_target(tmp_path / "nokind.csv")) == (
      f"manifest {tmp_path / 'nokind.csv'} lacks column 'mask' (segmentation) or 'label' "
      "(classification) (columns: image, other)")
  assert "does not exist" in data_error(lambda: targets.manifest_target(tmp_path / "x.csv"))
  (tmp_path / "vols" / "mask3.nii").unlink()
  assert data_error(lambda: list(targets.manifest_crops(path, "train", S, 2, 0, "ct"))) == (
      f"manifest {path} line 5: mask file {tmp_path / 'vols' / 'mask3.nii'} is missing")
  (tmp_path / "two.csv").write_text("\n".join(text.splitlines()[:3]) + "\n")
  assert data_error(lambda: list(targets.manifest_crops(tmp_path / "two.csv", "test", S, 2, 0,
                                                        "ct"))) == (
      f"manifest {tmp_path / 'two.csv'} has 2 cases; a train / val / test split needs at "
      "least 3")
  (tmp_path / "badsplit.csv").write_text("image,label,split\nvols/img0.nii.gz,1,training\n")
  assert "split 'training' is not one of train, val, test" in data_error(
      lambda: list(targets.manifest_crops(tmp_path / "badsplit.csv", "train", S, 2, 0, "ct")))
  (tmp_path / "badlabel.csv").write_text("image,label\nvols/img0.nii.gz,yes\n")
  assert "label 'yes' is not an integer" in data_error(
      lambda: list(targets.manifest_crops(tmp_path / "badlabel.csv", "train", S, 2, 0, "ct")))
  with pytest.raises(ConfigError):
    targets.manifest_crops(path, "train", S, 2, 0, "pet")


# ---------------------------------------------------------------------------------------------
# materialise


def test_materialise_round_trip_reuse_and_shrink(tmp_path):
  make_lits(tmp_path / "lits")
  out = tmp_path / "cache"
  split = targets.materialise(out, "lcs", "train", 10, S, targets.lits_lcs(
      tmp_path / "lits", "train", S, 10, 5, crops_per_volume=4))
  crops = list(targets.lits_lcs(tmp_path / "lits", "train", S, 10, 5, crops_per_volume=4))
  assert split.images.shape == (10, S, S, S, 1) and split.images.dtype == np.float32
  assert split.masks.shape == (10, S, S, S, 1) and split.masks.dtype == np.uint8
  assert split.labels.shape == (10,) and split.labels.dtype == np.float32
  np.testing.assert_array_equal(split.images[..., 0], np.stack([c[0] for c in crops]))
  np.testing.assert_array_equal(split.masks[..., 0], np.stack([c[1] for c in crops]))
  np.testing.assert_array_equal(split.labels, [c[2] for c in crops])
  assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
  assert sorted(p.name for p in out.iterdir()) == [
      "lcs_train.done", "lcs_train_images.npy", "lcs_train_labels.npy", "lcs_train_masks.npy"]

  def untouched():
    raise AssertionError("read back: the crops are not needed")
    yield
  again = targets.materialise(out, "lcs", "train", 10, S, untouched())
  np.testing.assert_array_equal(again.images, split.images)
  np.testing.assert_array_equal(again.labels, split.labels)

  make_luna(tmp_path / "luna")
  ncc = targets.materialise(out, "ncc", "train", 50, S,
                            targets.luna16_ncc(tmp_path / "luna", "train", S, 50, 3))
  assert ncc.images.shape == (4, S, S, S, 1) and not ncc.masks.any()
  assert sorted(ncc.labels.tolist()) == [0, 0, 1, 1]
  assert json.loads((out / "ncc_train.done").read_text())["count"] == 4
  again = targets.materialise(out, "ncc", "train", 50, S, untouched())
  assert again.images.shape == (4, S, S, S, 1)

  smaller = targets.materialise(out, "ncc", "train", 50, 6,  # another size: written anew
                                targets.luna16_ncc(tmp_path / "luna", "train", 6, 50, 3))
  assert smaller.images.shape == (4, 6, 6, 6, 1) and ncc.images.shape == (4, S, S, S, 1)

  assert data_error(lambda: targets.materialise(out, "ncc", "val", 5, S, iter(()))) == (
      "target ncc: the val split gave no crop")
  assert not any(p.name.startswith("ncc_val") for p in out.iterdir())


# --------------------------------------------------------------------------- label shares
def test_a_label_share_is_a_seeded_stratified_subset_read_from_its_memory_map(tmp_path):
  from medda_jax.methods.dira import report
  from medda_jax.methods.dira.targets import Split, label_subset

  n = 20
  images = np.lib.format.open_memmap(tmp_path / "images.npy", "w+", np.float32, (n, 2, 2, 2, 1))
  images[:] = np.arange(n, dtype=np.float32)[:, None, None, None, None]
  images.flush()
  images = np.load(tmp_path / "images.npy", mmap_mode="r")
  masks = np.zeros((n, 2, 2, 2, 1), np.uint8)
  labels = np.array([1.0] * 4 + [0.0] * 16, np.float32)
  split = Split(images, masks, labels)
  assert label_subset(split, 1.0, 0, True) is split
  half = label_subset(split, 0.5, 3, stratify=True)
  rows = half.images.index
  assert len(half.images) == len(half.labels) == 10 and np.all(np.diff(rows) > 0)
  assert sorted(half.labels.tolist()) == [0.0] * 8 + [1.0] * 2  # half of each class
  np.testing.assert_array_equal(half.labels, labels[rows])
  batch = np.array([[3, 0], [9, 4]])  # [steps, batch] rows of the subset, as the trainer asks
  np.testing.assert_array_equal(half.images[batch], np.asarray(images)[rows[batch]])
  np.testing.assert_array_equal(label_subset(split, 0.5, 3, True).images.index, rows)
  assert not np.array_equal(label_subset(split, 0.5, 4, True).images.index, rows)
  tenth = label_subset(split, 0.1, 0, stratify=True)  # every class keeps a crop
  assert set(tenth.labels.tolist()) == {0.0, 1.0} and len(tenth.labels) == 3
  assert len(label_subset(split, 0.01, 0, stratify=False).labels) == 2

  class C:  # the report over two shares, against the runs' own scores
    targets, seeds = ("t",), (0, 1)
    transfer = type("T", (), {"label_fractions": (1.0, 0.5)})
  runs = {report.finetune_key("random", "t", s, f): {"test": 0.1 * s + f}
          for s in (0, 1) for f in (1.0, 0.5)}
  assert "random/t/50%/seed1" in runs and "random/t/seed1" in runs
  curves = report.efficiency(runs, C, ["random"])
  assert curves == {"t": {"random": [(0.5, pytest.approx(0.55), pytest.approx(0.05)),
                                     (1.0, pytest.approx(1.05), pytest.approx(0.05))]}}
  md = report.efficiency_markdown(curves, C, {"t": "classification"})
  assert "**t** (AUC)" in md and "| random | 0.5500 ± 0.0500 | 1.0500 ± 0.0500 |" in md
