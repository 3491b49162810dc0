"""MetaImage reading and the LUNA16, LiTS and BraTS layouts, on tiny fixtures written here."""

from __future__ import annotations

import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from conftest import data_error
from medda_jax.data import ct_sets, metaimage
from medda_jax.errors import ConfigError

# A 6 x 5 x 4 (z, y, x) volume whose voxels encode their own index: 100 z + 10 y + x.
ZYX = (6, 5, 4)
SPACING = (2.5, 0.7, 0.5)      # (z, y, x)
ORIGIN = (-30.0, -20.0, -10.0)  # (z, y, x)


def index_volume(shape=ZYX, offset=0) -> np.ndarray:
  z, y, x = np.indices(shape)
  return (100 * z + 10 * y + x + offset).astype(np.int16)


def handwritten_header(extra: str = "", dims="4 5 6", element="MET_SHORT",
                       data_file="scan.raw") -> str:
  return ("ObjectType = Image\nNDims = 3\nBinaryData = True\n"
          f"{extra}TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -10 -20 -30\n"
          f"ElementSpacing = 0.5 0.7 2.5\nDimSize = {dims}\nElementType = {element}\n"
          f"ElementDataFile = {data_file}\n")


def x_fastest_bytes(fmt: str) -> bytes:
  """The index volume written voxel by voxel, x varying fastest, as MetaIO stores it."""
  return b"".join(struct.pack(fmt, 100 * z + 10 * y + x)
                  for z in range(ZYX[0]) for y in range(ZYX[1]) for x in range(ZYX[2]))


# ---------------------------------------------------------------------------------------------
# MetaImage


def test_axis_order_spacing_and_origin_of_a_handwritten_file(tmp_path):
  (tmp_path / "scan.mhd").write_text(handwritten_header("BinaryDataByteOrderMSB = False\n"))
  (tmp_path / "scan.raw").write_bytes(x_fastest_bytes("<h"))
  array, spacing, origin = metaimage.read_mhd(tmp_path / "scan.mhd", with_origin=True)
  assert array.shape == ZYX and array.dtype == np.int16
  np.testing.assert_array_equal(array, index_volume())
  assert array[3, 2, 1] == 321
  assert spacing == SPACING and origin == ORIGIN
  assert len(metaimage.read_mhd(tmp_path / "scan.mhd")) == 2


def test_big_endian_handwritten_file_and_the_header_dict(tmp_path):
  (tmp_path / "scan.mhd").write_text(
      handwritten_header("ElementByteOrderMSB = True\n", element="MET_USHORT"))
  (tmp_path / "scan.raw").write_bytes(x_fastest_bytes(">H"))
  array, _ = metaimage.read_mhd(tmp_path / "scan.mhd")
  assert array.dtype == np.uint16
  np.testing.assert_array_equal(array, index_volume().astype(np.uint16))
  header = metaimage.read_header(tmp_path / "scan.mhd")
  assert header["DimSize"] == "4 5 6" and header["ElementDataFile"] == "scan.raw"
  assert header["ElementByteOrderMSB"] == "True"


def test_header_size_skips_leading_bytes(tmp_path):
  (tmp_path / "scan.mhd").write_text(handwritten_header("HeaderSize = 7\n"))
  (tmp_path / "scan.raw").write_bytes(b"garbage" + x_fastest_bytes("<h"))
  np.testing.assert_array_equal(metaimage.read_mhd(tmp_path / "scan.mhd")[0], index_volume())


@pytest.mark.parametrize("msb", [False, True])
@pytest.mark.parametrize("dtype,element", [
    (np.uint8, "MET_UCHAR"), (np.int8, "MET_CHAR"), (np.int16, "MET_SHORT"),
    (np.uint16, "MET_USHORT"), (np.int32, "MET_INT"), (np.uint32, "MET_UINT"),
    (np.float32, "MET_FLOAT"), (np.float64, "MET_DOUBLE")])
def test_round_trip_per_element_type_and_byte_order(tmp_path, dtype, element, msb):
  values = (index_volume() % 120 - (0 if np.dtype(dtype).kind == "u" else 60)).astype(dtype)
  if np.dtype(dtype).kind == "f":
    values = values + dtype(0.25)
  path = metaimage.write_mhd(tmp_path / "v.mhd", values, SPACING, ORIGIN, msb=msb)
  header = metaimage.read_header(path)
  assert header["ElementType"] == element and header["DimSize"] == "4 5 6"
  assert header["BinaryDataByteOrderMSB"] == str(msb)
  stored = values.astype(np.dtype(dtype).newbyteorder(">" if msb else "<")).tobytes()
  assert (tmp_path / "v.raw").read_bytes() == stored
  array, spacing, origin = metaimage.read_mhd(path, with_origin=True)
  assert array.dtype == dtype and array.dtype.isnative
  np.testing.assert_array_equal(array, values)
  assert spacing == SPACING and origin == ORIGIN


def test_compressed_round_trip(tmp_path):
  values = index_volume()
  path = metaimage.write_mhd(tmp_path / "c.mhd", values, SPACING, compressed=True)
  assert metaimage.read_header(path)["CompressedData"] == "True"
  packed = (tmp_path / "c.zraw").read_bytes()
  assert zlib.decompress(packed) == values.astype("<i2").tobytes() and len(packed) < values.nbytes
  np.testing.assert_array_equal(metaimage.read_mhd(path)[0], values)


def test_local_data_after_the_header(tmp_path):
  values = index_volume().astype(np.float32) / 4
  path = metaimage.write_mhd(tmp_path / "l.mhd", values, SPACING, ORIGIN, local=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["l.mhd"]
  array, spacing, origin = metaimage.read_mhd(path, with_origin=True)
  np.testing.assert_array_equal(array, values)
  assert (spacing, origin) == (SPACING, ORIGIN)
  # handwritten: data bytes right after the ElementDataFile line
  (tmp_path / "h.mhd").write_bytes(handwritten_header(data_file="LOCAL").encode()
                                   + x_fastest_bytes("<h"))
  np.testing.assert_array_equal(metaimage.read_mhd(tmp_path / "h.mhd")[0], index_volume())


def test_metaimage_errors_are_one_line(tmp_path):
  (tmp_path / "scan.mhd").write_text(handwritten_header())
  message = data_error(lambda: metaimage.read_mhd(tmp_path / "scan.mhd"))
  assert message == f"{tmp_path / 'scan.mhd'} names data file scan.raw, which is missing"

  (tmp_path / "scan.raw").write_bytes(x_fastest_bytes("<h")[:-2])
  message = data_error(lambda: metaimage.read_mhd(tmp_path / "scan.mhd"))
  assert message.startswith(f"{tmp_path / 'scan.raw'}: data has 238 bytes")
  assert message.endswith("needs 240")

  (tmp_path / "odd.mhd").write_text(handwritten_header(element="MET_FOO"))
  assert "unknown ElementType 'MET_FOO'" in data_error(
      lambda: metaimage.read_mhd(tmp_path / "odd.mhd"))

  (tmp_path / "nodims.mhd").write_text(handwritten_header().replace("DimSize = 4 5 6\n", ""))
  assert data_error(lambda: metaimage.read_mhd(tmp_path / "nodims.mhd")) == (
      f"{tmp_path / 'nodims.mhd'}: MetaImage header has no DimSize")

  (tmp_path / "z.raw").write_bytes(x_fastest_bytes("<h"))
  (tmp_path / "z.mhd").write_text(handwritten_header("CompressedData = True\n",
                                                     data_file="z.raw"))
  assert "does not decompress" in data_error(lambda: metaimage.read_mhd(tmp_path / "z.mhd"))


# ---------------------------------------------------------------------------------------------
# LUNA16

UID_A, UID_B, UID_GONE = "1.3.6.1.100", "1.3.6.1.200", "1.3.6.1.999"


def make_luna(root, candidates_name="candidates_V2.csv", annotation_columns=None):
  (root / "subset0").mkdir(parents=True)
  (root / "subset1").mkdir()
  metaimage.write_mhd(root / "subset0" / f"{UID_A}.mhd", index_volume(offset=-500), SPACING,
                      ORIGIN)
  metaimage.write_mhd(root / "subset1" / f"{UID_B}.mhd", index_volume(offset=-900), SPACING,
                      ORIGIN)
  (root / "subset1" / "notes.txt").write_text("not a scan")
  columns = annotation_columns or "seriesuid,coordX,coordY,coordZ,diameter_mm"
  (root / "annotations.csv").write_text(
      f"{columns}\n"
      f"{UID_A},-9.0,-18.6,-25.0,5.5\n"
      f"{UID_GONE},1,2,3,4\n"
      f"{UID_B},-8.5,-19.3,-27.5,3.25\n"
      f"{UID_A},-10,-20,-30,7\n")
  (root / candidates_name).write_text(
      "seriesuid,coordX,coordY,coordZ,class\n"
      f"{UID_B},-9,-18.6,-25,1\n"
      f"{UID_GONE},0,0,0,0\n"
      f"{UID_A},-10,-20,-30,0\n"
      f"{UID_GONE},1,1,1,1\n")


def test_luna16_table_csvs_and_dropped_rows(tmp_path):
  make_luna(tmp_path)
  luna = ct_sets.load_luna16(tmp_path)
  assert luna.series() == [UID_A, UID_B]
  assert luna.scans[UID_B] == ct_sets.Luna16Scan(
      UID_B, str(tmp_path / "subset1" / f"{UID_B}.mhd"), 1)
  assert luna.scans[UID_A].subset == 0
  np.testing.assert_array_equal(luna.annotations[UID_A],
                                [[-9.0, -18.6, -25.0, 5.5], [-10, -20, -30, 7]])
  centres, diameters = luna.nodules(UID_B)
  np.testing.assert_array_equal(centres, [[-8.5, -19.3, -27.5]])
  np.testing.assert_array_equal(diameters, [3.25])
  centres, classes = luna.candidate_list(UID_B)
  np.testing.assert_array_equal(centres, [[-9, -18.6, -25]])
  assert classes.tolist() == [1] and classes.dtype == np.int64
  assert (luna.dropped_annotations, luna.dropped_candidates) == (1, 2)
  assert luna.candidates_file == str(tmp_path / "candidates_V2.csv")

  only_b = ct_sets.load_luna16(tmp_path, subsets=[1])
  assert only_b.series() == [UID_B]
  assert (only_b.dropped_annotations, only_b.dropped_candidates) == (3, 3)
  assert only_b.nodules(UID_A)[0].shape == (0, 3)


def test_luna16_csvs_are_optional_and_v2_is_preferred(tmp_path):
  make_luna(tmp_path, candidates_name="candidates.csv")
  (tmp_path / "candidates_V2.csv").write_text(f"seriesuid,coordX,coordY,coordZ,class\n"
                                              f"{UID_A},1,2,3,1\n")
  luna = ct_sets.load_luna16(tmp_path)
  assert luna.candidates_file == str(tmp_path / "candidates_V2.csv")
  assert list(luna.candidates) == [UID_A] and luna.dropped_candidates == 0
  for name in ("annotations.csv", "candidates.csv", "candidates_V2.csv"):
    (tmp_path / name).unlink()
  luna = ct_sets.load_luna16(tmp_path)
  assert luna.annotations_file is None and luna.annotations == {}
  assert data_error(lambda: luna.nodules(UID_A)) == (
      f"LUNA16 folder {tmp_path} has no annotations.csv")


def test_read_scan_world_to_voxel_and_crops(tmp_path):
  make_luna(tmp_path)
  luna = ct_sets.load_luna16(tmp_path)
  volume, spacing, origin = ct_sets.read_scan(luna, UID_A)
  assert volume.dtype == np.float32 and volume.shape == ZYX
  np.testing.assert_array_equal(volume, index_volume(offset=-500))
  assert spacing == SPACING and origin == ORIGIN
  # (x, y, z) = (-9, -18.6, -25): z = (-25 + 30) / 2.5, y = (-18.6 + 20) / 0.7, x = (-9 + 10) / 0.5
  np.testing.assert_allclose(ct_sets.world_to_voxel((-9, -18.6, -25), origin, spacing),
                             [2.0, 2.0, 2.0])
  np.testing.assert_allclose(
      ct_sets.world_to_voxel([[-10, -20, -30], [-8.5, -19.3, -27.5]], origin, spacing),
      [[0, 0, 0], [1.0, 1.0, 3.0]])

  centre = ct_sets.candidate_crop(volume, spacing, origin, (-9, -18.6, -25), 3)
  np.testing.assert_array_equal(centre, volume[1:4, 1:4, 1:4])
  assert centre[1, 1, 1] == 222 - 500
  even = ct_sets.candidate_crop(volume, spacing, origin, (-9, -18.6, -25), 4)
  np.testing.assert_array_equal(even, volume[0:4, 0:4, 0:4])

  corner = ct_sets.candidate_crop(volume, spacing, origin, (-10, -20, -30), 3)
  assert corner.shape == (3, 3, 3) and corner.dtype == np.float32
  np.testing.assert_array_equal(corner[1:, 1:, 1:], volume[0:2, 0:2, 0:2])
  padding = np.ones((3, 3, 3), bool)
  padding[1:, 1:, 1:] = False
  assert np.all(corner[padding] == -500.0)  # the volume minimum, voxel (0, 0, 0)

  far = ct_sets.candidate_crop(volume, spacing, origin, (-8.5, -19.3, -15), (2, 3, 4))
  # centre voxel (z, y, x) = (6, 1, 3): z rows 5 and 6, only 5 inside
  assert far.shape == (2, 3, 4)
  np.testing.assert_array_equal(far[0, :, :3], volume[5, 0:3, 1:4])
  assert np.all(far[1] == -500.0) and np.all(far[0, :, 3] == -500.0)


def test_luna16_errors(tmp_path):
  make_luna(tmp_path, annotation_columns="seriesuid,coordX,coordY,coordZ,diameter")
  assert data_error(lambda: ct_sets.load_luna16(tmp_path)) == (
      f"{tmp_path / 'annotations.csv'} lacks column 'diameter_mm' "
      "(columns: seriesuid, coordX, coordY, coordZ, diameter)")
  luna_dir = tmp_path / "empty"
  (luna_dir / "subset0").mkdir(parents=True)
  assert data_error(lambda: ct_sets.load_luna16(luna_dir)) == (
      f"LUNA16 folder {luna_dir} has no subset*/ folder with .mhd files")
  assert data_error(lambda: ct_sets.load_luna16(tmp_path, subsets=[0, 7])) == (
      f"LUNA16 folder {tmp_path} has no subset folder(s) subset7")

  (tmp_path / "annotations.csv").unlink()
  luna = ct_sets.load_luna16(tmp_path)
  assert "1.3.6.1.5" in data_error(lambda: ct_sets.read_scan(luna, "1.3.6.1.5"))
  header = tmp_path / "subset0" / f"{UID_A}.mhd"
  header.write_text(header.read_text().replace("TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                               "TransformMatrix = -1 0 0 0 1 0 0 0 1"))
  assert data_error(lambda: ct_sets.read_scan(luna, UID_A)) == (
      f"{header}: TransformMatrix is not the identity, which LUNA16 coordinates assume")


# ---------------------------------------------------------------------------------------------
# NIfTI fixtures: arrays given in (z, y, x), stored as NIfTI (i, j, k) = (x, y, z)

NIFTI_ZOOMS = (0.7, 0.8, 2.5)  # (x, y, z) as stored


def write_nifti(path, zyx: np.ndarray, zooms=NIFTI_ZOOMS):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)),
                           np.diag([*zooms, 1.0])), str(path))


def label_volume(values=(0, 1, 2)) -> np.ndarray:
  z, y, x = np.indices(ZYX)
  return np.asarray(values, np.uint8)[(z + 2 * y + 3 * x) % len(values)]


def make_lits_case(folder, case, ext=".nii", seg_folder=None, labels=None):
  write_nifti(folder / f"volume-{case}{ext}", index_volume(offset=-1000 + case))
  write_nifti((seg_folder or folder) / f"segmentation-{case}{ext}",
              label_volume() if labels is None else labels)


def test_lits_flat_folder_sorted_by_number_and_read_exactly(tmp_path):
  for case in (10, 2, 0):
    make_lits_case(tmp_path, case, ext=".nii.gz" if case == 2 else ".nii")
  (tmp_path / "test-volume-5.nii").write_bytes(b"")  # test release: ignored
  cases = ct_sets.load_lits(tmp_path)
  assert [c.id for c in cases] == [0, 2, 10]
  assert cases[1] == ct_sets.LitsCase(2, str(tmp_path / "volume-2.nii.gz"),
                                      str(tmp_path / "segmentation-2.nii.gz"))
  volume, labels, spacing = ct_sets.read_lits_case(cases[2])
  assert volume.dtype == np.float32 and labels.dtype == np.uint8 and volume.shape == ZYX
  np.testing.assert_array_equal(volume, index_volume(offset=-990))
  np.testing.assert_array_equal(labels, label_volume())
  assert labels[1, 2, 3] == (1 + 4 + 9) % 3
  assert spacing == pytest.approx((2.5, 0.8, 0.7))


def test_lits_training_batch_folders(tmp_path):
  make_lits_case(tmp_path / "Training Batch 1", 0)
  make_lits_case(tmp_path / "Training Batch 2", 28, ext=".nii.gz")
  cases = ct_sets.load_lits(tmp_path)
  assert [(c.id, c.volume, c.segmentation) for c in cases] == [
      (0, str(tmp_path / "Training Batch 1" / "volume-0.nii"),
       str(tmp_path / "Training Batch 1" / "segmentation-0.nii")),
      (28, str(tmp_path / "Training Batch 2" / "volume-28.nii.gz"),
       str(tmp_path / "Training Batch 2" / "segmentation-28.nii.gz"))]
  np.testing.assert_array_equal(ct_sets.read_lits_case(cases[1])[1], label_volume())


def test_lits_errors(tmp_path):
  make_lits_case(tmp_path, 0)
  write_nifti(tmp_path / "Training Batch 2" / "volume-3.nii", index_volume())
  assert data_error(lambda: ct_sets.load_lits(tmp_path)) == (
      f"LiTS volume {tmp_path / 'Training Batch 2' / 'volume-3.nii'} has no "
      f"segmentation-3.nii(.gz) in {tmp_path} or a folder under it")
  bad = tmp_path / "bad"
  make_lits_case(bad, 4, labels=label_volume((0, 1, 2, 3)))
  case = ct_sets.load_lits(bad)[0]
  assert data_error(lambda: ct_sets.read_lits_case(case)) == (
      f"{bad / 'segmentation-4.nii'}: label values 3 outside {{0, 1, 2}}")
  assert data_error(lambda: ct_sets.load_lits(tmp_path / "Training Batch 1")) == (
      f"LiTS folder {tmp_path / 'Training Batch 1'} does not exist")


# ---------------------------------------------------------------------------------------------
# BraTS

BRATS_SEG = np.zeros(ZYX, np.uint8)
BRATS_SEG[1, 1, 1:4] = (1, 2, 4)
BRATS_SEG[2, 3, 0] = 4
BRATS_SEG[4, 0, 2] = 2


def make_brats_case(folder, ext=".nii.gz", skip=()):
  case = folder.name
  for c, modality in enumerate(ct_sets.BRATS_MODALITIES):
    if modality not in skip:
      write_nifti(folder / f"{case}_{modality}{ext}", index_volume(offset=1000 * c))
  if "seg" not in skip:
    write_nifti(folder / f"{case}_seg{ext}", BRATS_SEG)


def test_brats_cases_under_root_and_one_level_down(tmp_path):
  make_brats_case(tmp_path / "BraTS2021_00002")
  make_brats_case(tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001",
                  ext=".nii")
  (tmp_path / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv").write_text("x\n")
  cases = ct_sets.load_brats(tmp_path)
  assert [(c.id, c.group) for c in cases] == [  # sorted by id: "BraTS202" < "BraTS20_"
      ("BraTS2021_00002", ""), ("BraTS20_Training_001", "MICCAI_BraTS2020_TrainingData")]
  folder = tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001"
  assert cases[1].images == tuple(str(folder / f"BraTS20_Training_001_{m}.nii")
                                  for m in ("flair", "t1", "t1ce", "t2"))
  assert cases[1].segmentation == str(folder / "BraTS20_Training_001_seg.nii")
  for case in cases:  # .nii.gz and .nii
    image, labels, spacing = ct_sets.read_brats_case(case)
    assert image.shape == ZYX + (4,) and image.dtype == np.float32
    for c in range(4):  # flair, t1, t1ce, t2
      np.testing.assert_array_equal(image[..., c], index_volume(offset=1000 * c))
    np.testing.assert_array_equal(labels, BRATS_SEG)
    assert labels.dtype == np.uint8 and labels[1, 1, 3] == 4
    assert spacing == pytest.approx((2.5, 0.8, 0.7))


def test_brats_hgg_lgg_and_modality_order(tmp_path):
  make_brats_case(tmp_path / "MICCAI_BraTS_2019_Data_Training" / "LGG" / "BraTS19_a")
  make_brats_case(tmp_path / "MICCAI_BraTS_2019_Data_Training" / "HGG" / "BraTS19_b")
  cases = ct_sets.load_brats(tmp_path, modalities=("t2", "flair"))
  assert [(c.id, c.group) for c in cases] == [
      ("BraTS19_a", "MICCAI_BraTS_2019_Data_Training/LGG"),
      ("BraTS19_b", "MICCAI_BraTS_2019_Data_Training/HGG")]
  image, _, _ = ct_sets.read_brats_case(cases[0])
  assert image.shape == ZYX + (2,) and cases[0].modalities == ("t2", "flair")
  np.testing.assert_array_equal(image[..., 0], index_volume(offset=3000))  # t2
  np.testing.assert_array_equal(image[..., 1], index_volume(offset=0))     # flair
  with pytest.raises(ConfigError):
    ct_sets.load_brats(tmp_path, modalities=("t2", "dwi"))


def test_brats_regions():
  labels = np.array([[0, 1, 2], [4, 2, 0]], np.uint8)
  regions = ct_sets.brats_regions(labels)
  assert list(regions) == ["WT", "TC", "ET"]
  np.testing.assert_array_equal(regions["WT"], [[False, True, True], [True, True, False]])
  np.testing.assert_array_equal(regions["TC"], [[False, True, False], [True, False, False]])
  np.testing.assert_array_equal(regions["ET"], [[False, False, False], [True, False, False]])
  assert regions["WT"].dtype == bool


def test_brats_errors(tmp_path):
  make_brats_case(tmp_path / "BraTS2021_00001", skip=("t1ce",))
  assert data_error(lambda: ct_sets.load_brats(tmp_path)) == (
      f"BraTS case BraTS2021_00001 lacks BraTS2021_00001_t1ce.nii.gz (or .nii) in "
      f"{tmp_path / 'BraTS2021_00001'}")
  # t1ce not requested: the case loads
  assert len(ct_sets.load_brats(tmp_path, modalities=("flair", "t2"))) == 1
  no_seg = tmp_path / "s"
  make_brats_case(no_seg / "BraTS2021_00003", skip=("seg",))
  assert "lacks BraTS2021_00003_seg.nii.gz" in data_error(lambda: ct_sets.load_brats(no_seg))
  bad = tmp_path / "b"
  make_brats_case(bad / "c1")
  write_nifti(bad / "c1" / "c1_seg.nii.gz", label_volume((0, 1, 3)))
  case = ct_sets.load_brats(bad)[0]
  assert data_error(lambda: ct_sets.read_brats_case(case)) == (
      f"{bad / 'c1' / 'c1_seg.nii.gz'}: label values 3 outside {{0, 1, 2, 4}}")
  empty = tmp_path / "e"
  (empty / "folder").mkdir(parents=True)
  assert "has no case folder" in data_error(lambda: ct_sets.load_brats(empty))
