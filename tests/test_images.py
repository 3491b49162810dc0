"""User image domains (medda_jax.data.images): class folders and CSVs, lazy decoding,
patient-level splits and the errors a user can cause."""

import csv
import pathlib

import grain
import numpy as np
import pytest

from conftest import data_error
from PIL import Image

from medda_jax.data import images
from medda_jax.errors import ConfigError, DataError


def write_folder(root: pathlib.Path, classes: dict[str, int], colour=False, size=(10, 14),
                 suffix=".png", seed=0) -> pathlib.Path:
  """<root>/<class>/<i><suffix>: class k's images have mean grey level 40 + 60 k."""
  rng = np.random.default_rng(seed)
  for k, (name, n) in enumerate(classes.items()):
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      shape = size + ((3,) if colour else ())
      pixels = np.clip(rng.normal(40 + 60 * k, 10, shape), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(root / name / f"{i}{suffix}")
  return root


def write_csv(path: pathlib.Path, rows, header=("path", "label", "patient_id")) -> pathlib.Path:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def test_folder_classes_are_sorted_folder_names_and_images_decode_grey_or_colour(tmp_path):
  root = write_folder(tmp_path / "site", {"normal": 3, "benign": 2, "malignant": 4}, colour=True)
  table = images.load_table("ours", root)
  assert table.class_names == ("benign", "malignant", "normal")
  assert table.counts() == {"benign": 2, "malignant": 4, "normal": 3}
  grey = images.read_set(images.ImageSource(table, 8, 1))
  colour = images.read_set(images.ImageSource(table, 8, 3))
  assert grey.images.shape == (9, 8, 8, 1) and colour.images.shape == (9, 8, 8, 3)
  assert grey.images.dtype == np.float32 and 0 <= grey.images.min() <= grey.images.max() <= 1
  np.testing.assert_array_equal(grey.labels, [0, 0, 1, 1, 1, 1, 2, 2, 2])
  # Decoding by hand: PIL luminance, bilinear resize, / 255.
  with Image.open(table.paths[0]) as f:
    want = np.asarray(f.convert("L").resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(grey.images[0, ..., 0], want, atol=1e-6)


def test_grey_files_read_as_colour_are_replicated(tmp_path):
  table = images.load_table("g", write_folder(tmp_path / "g", {"a": 1, "b": 1}))
  image, label = images.ImageSource(table, 6, 3)[1]
  assert label == 1 and image.shape == (6, 6, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_source_streams_through_grain_with_the_same_images(tmp_path):
  table = images.load_table("g", write_folder(tmp_path / "g", {"a": 3, "b": 3}))
  source = images.ImageSource(table, 8, 1)
  ds = grain.MapDataset.source(source).map(lambda e: e[0].mean())
  want = [source[i][0].mean() for i in range(len(source))]
  np.testing.assert_allclose(list(ds), want)
  subset = images.read_set(source, [4, 1])
  np.testing.assert_array_equal(subset.labels, [1, 0])
  np.testing.assert_array_equal(subset.images[0], source[4][0])


def test_csv_relative_and_absolute_paths_integer_labels_and_patients(tmp_path):
  root = write_folder(tmp_path / "imgs", {"x": 4})
  files = sorted((root / "x").iterdir())
  csv_path = write_csv(tmp_path / "list.csv", [
      ("imgs/x/0.png", "10", "p1"), (str(files[1]), "2", "p1"),
      ("imgs/x/2.png", "2", "p2"), ("imgs/x/3.png", "10", "p3")])
  table = images.load_table("clinic_b", csv_path)
  assert table.class_names == ("2", "10")  # integers in numeric order
  np.testing.assert_array_equal(table.labels, [1, 0, 0, 1])
  assert table.patient_ids == ("p1", "p1", "p2", "p3")
  assert table.paths[0] == str(tmp_path / "imgs" / "x" / "0.png")


def test_patient_split_keeps_every_patient_in_one_split_and_is_seeded(tmp_path):
  root = write_folder(tmp_path / "imgs", {"x": 1})
  rows = [("imgs/x/0.png", "ab"[i % 2], f"p{i // 3}") for i in range(60)]
  table = images.load_table("c", write_csv(tmp_path / "l.csv", rows))
  parts = images.split_indices(table, (0.6, 0.2, 0.2), seed=3)
  assert sorted(np.concatenate(parts).tolist()) == list(range(60))
  patients = [{table.patient_ids[i] for i in p} for p in parts]
  assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
  assert [len(p) for p in parts] == [36, 12, 12]
  again = images.split_indices(table, (0.6, 0.2, 0.2), seed=3)
  other = images.split_indices(table, (0.6, 0.2, 0.2), seed=4)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_split_without_patients_is_stratified(tmp_path):
  table = images.load_table("s", write_folder(tmp_path / "s", {"a": 20, "b": 10}))
  train, val, test = images.split_indices(table, (0.6, 0.2, 0.2), seed=0)
  assert np.bincount(table.labels[train]).tolist() == [12, 6]
  assert np.bincount(table.labels[test]).tolist() == [4, 2]
  assert len(set(train) | set(val) | set(test)) == 30


def test_group_pick_takes_whole_patients():
  groups = ["p0", "p0", "p1", "p2", "p2", "p2", "p3"]
  idx = images.group_pick(groups, 3, np.random.default_rng(0))
  picked = {groups[i] for i in idx}
  assert len(idx) >= 3
  assert all(groups[i] not in picked for i in set(range(7)) - set(idx.tolist()))


@pytest.mark.parametrize("entry, want", [("ours=/data/x", ("ours", "/data/x")),
                                         ("busi", ("busi", None)),
                                         ("clinic_b=rel/b.csv", ("clinic_b", "rel/b.csv"))])
def test_parse_domain(entry, want):
  assert images.parse_domain(entry) == want


@pytest.mark.parametrize("entry", ["=/data/x", "my site=/x", "ours="])
def test_parse_domain_rejects_bad_names(entry):
  with pytest.raises(ConfigError, match="name=path"):
    images.parse_domain(entry)


def test_folder_errors_name_the_problem(tmp_path):
  empty = write_folder(tmp_path / "empty", {"a": 2})
  (empty / "b").mkdir()
  assert "class folder" in data_error(lambda: images.load_table("e", empty))
  assert str(empty / "b") in data_error(lambda: images.load_table("e", empty))
  (tmp_path / "none").mkdir()
  assert "no class folders" in data_error(lambda: images.load_table("n", tmp_path / "none"))
  single = write_folder(tmp_path / "single", {"a": 2})
  assert "single class" in data_error(lambda: images.load_table("s", single))
  assert "not a folder" in data_error(lambda: images.load_table("m", tmp_path / "missing"))


def test_csv_errors_name_the_problem(tmp_path):
  write_folder(tmp_path / "imgs", {"x": 2})
  missing = write_csv(tmp_path / "m.csv", [("imgs/x/0.png", "a", "p"),
                                           ("imgs/x/9.png", "b", "q")])
  message = data_error(lambda: images.load_table("m", missing))
  assert "line 3" in message and "9.png" in message
  no_label = write_csv(tmp_path / "c.csv", [("imgs/x/0.png",)], header=("path",))
  with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
    images.load_table("c", no_label)
  one = write_csv(tmp_path / "o.csv", [("imgs/x/0.png", "a", "p")])
  assert "single class" in data_error(lambda: images.load_table("o", one))


def test_unreadable_image_and_dicom_without_pydicom(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not a png")
  assert "cannot read image file" in data_error(lambda: images.read_image(bad, 8, 1))
  dcm = tmp_path / "x.dcm"
  dcm.write_bytes(b"\0" * 200)
  try:
    import pydicom  # noqa: F401
  except ImportError:
    assert "pip install pydicom" in data_error(lambda: images.read_image(dcm, 8, 1))
  else:
    assert "cannot read image file" in data_error(lambda: images.read_image(dcm, 8, 1))


def test_batches_stream_one_shuffled_pass_in_worker_threads(tmp_path):
  table = images.load_table("g", write_folder(tmp_path / "g", {"a": 5, "b": 6}))
  source = images.ImageSource(table, 8, 1)
  idx = np.arange(1, 11)
  got = list(images.batches(source, idx, 4, seed=0))
  assert [b[0].shape for b in got] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
  means = np.concatenate([b[0].mean(axis=(1, 2, 3)) for b in got])
  want = np.array([source[i][0].mean() for i in idx])
  np.testing.assert_allclose(np.sort(means), np.sort(want), rtol=1e-6)  # each image once
  assert not np.allclose(means, want)  # shuffled
  again = np.concatenate([b[1] for b in images.batches(source, idx, 4, seed=0)])
  np.testing.assert_array_equal(again, np.concatenate([b[1] for b in got]))


def test_chest_xray_site_source_decodes_as_read_images(tmp_path):
  from medda_jax.data import cxr_sites
  from test_usps_cxr_sites import make_nih
  make_nih(tmp_path, patients=3, per_patient=2)
  table = cxr_sites.load_opacity_site("nih", tmp_path)
  source = cxr_sites.site_source(table, 12)
  streamed = images.read_set(source)
  np.testing.assert_allclose(streamed.images, cxr_sites.read_images(table, 12), atol=1e-6)
  np.testing.assert_array_equal(streamed.labels, table.labels)


class _Counting:
  """A stub source: image i is filled with i; counts the decodes."""

  def __init__(self, n, shape=(3, 3, 1)):
    self.n, self.image_shape, self.decoded = n, shape, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.decoded.append(i)
    return np.full(self.image_shape, i, np.float32), i % 2


def test_lazy_images_index_as_the_array_and_decode_only_what_is_asked():
  source = _Counting(10)
  twice = lambda x: np.repeat(2 * x, 3, axis=-1)
  lazy = images.LazyImages(source, [9, 2, 5, 0, 7, 3], transform=twice, threads=3)
  full = twice(np.stack([source[i][0] for i in range(10)]))[[9, 2, 5, 0, 7, 3]]
  source.decoded.clear()
  assert lazy.shape == full.shape and lazy.dtype == full.dtype and len(lazy) == 6
  assert source.decoded == []
  for key in (np.array([[4, 0], [1, 1]]), slice(1, 5), slice(None, None, -2), 3, -1,
              np.array([True, False] * 3)):
    np.testing.assert_array_equal(lazy[key], full[key])
  source.decoded.clear()
  lazy[np.array([[4, 0], [1, 1]])]
  assert sorted(source.decoded) == [2, 2, 7, 9]  # positions 4, 0, 1, 1 of the index list
  # take and concat stay lazy; both read the same images as the arrays would.
  data = images.ImageSet(lazy, np.arange(6, dtype=np.int32))
  held = images.ImageSet(full, np.arange(6, dtype=np.int32))
  source.decoded.clear()
  part, joined = data.take([5, 1]), images.concat([data, held.take([0, 2]), data.take([3])])
  assert isinstance(part.images, images.LazyImages) and source.decoded == []
  assert isinstance(joined.images, images.LazyImages) and joined.images.shape == (9, 3, 3, 3)
  np.testing.assert_array_equal(part.images[:], held.take([5, 1]).images)
  want = images.concat([held, held.take([0, 2]), held.take([3])])
  np.testing.assert_array_equal(joined.images[np.array([8, 0, 6, 7])],
                                want.images[np.array([8, 0, 6, 7])])
  np.testing.assert_array_equal(joined.labels, want.labels)


def test_spill_writes_a_function_of_the_batches_to_disk_and_reads_it_back(tmp_path):
  source = _Counting(7)
  lazy = images.LazyImages(source)
  want = np.stack([source[i][0] for i in range(7)]) * -1.5
  out = images.spill(tmp_path / "t.npy", lazy, lambda x: x * -1.5, batch_size=3)
  assert isinstance(out, images.LazyImages) and out.shape == want.shape
  np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), want)
  np.testing.assert_array_equal(out[np.array([6, 0, 3])], want[[6, 0, 3]])
