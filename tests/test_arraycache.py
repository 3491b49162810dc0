"""The on-disk cache of preprocessed arrays: chunked writes, memory-mapped reads, atomic
publication, and preprocessing that holds a few cases at a time."""

import os
import threading
import time

import numpy as np
import pytest

from medda_jax.data import arraycache, volumes


def test_appended_chunks_read_back_as_their_concatenation(tmp_path):
  rng = np.random.default_rng(0)
  chunks = [rng.normal(size=(n, 3, 2)).astype(np.float32) for n in (4, 0, 7, 1)]
  writer = arraycache.Writer(str(tmp_path / "c"))
  for chunk in chunks:
    writer.append("images", chunk)
    writer.append("rows", np.arange(len(chunk), dtype=np.int64))
  writer.append("unused", np.zeros(3))
  writer.drop("unused")
  writer.put("flag", np.array(True))
  writer.put("names", np.array(["a", "bb"]))
  arrays = writer.finish()
  assert sorted(arrays) == ["flag", "images", "names", "rows"]
  np.testing.assert_array_equal(arrays["images"], np.concatenate(chunks))
  np.testing.assert_array_equal(arrays["rows"], np.concatenate([np.arange(len(c)) for c in chunks]))
  assert arrays["images"].dtype == np.float32 and arrays["rows"].dtype == np.int64
  assert bool(arrays["flag"]) and list(arrays["names"]) == ["a", "bb"]
  assert isinstance(arrays["images"], np.memmap) and not arrays["images"].flags.writeable
  assert os.listdir(tmp_path) == ["c"]  # no scratch left beside it


def test_small_copy_blocks_give_the_same_arrays(tmp_path, monkeypatch):
  monkeypatch.setattr(arraycache, "_COPY_BYTES", 40)  # 40 bytes: rows copied a few at a time
  data = np.arange(7 * 5, dtype=np.float64).reshape(7, 5)
  writer = arraycache.Writer(str(tmp_path / "c"))
  writer.append("x", data[:3])
  writer.append("x", data[3:])
  np.testing.assert_array_equal(writer.finish()["x"], data)


def test_a_chunk_of_another_shape_is_refused(tmp_path):
  writer = arraycache.Writer(str(tmp_path / "c"))
  writer.append("x", np.zeros((2, 3)))
  with pytest.raises(ValueError, match="x: chunk"):
    writer.append("x", np.zeros((2, 4)))
  writer.abort()
  assert os.listdir(tmp_path) == []


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path):
  path = str(tmp_path / "c")

  def failing(writer):
    writer.append("x", np.ones((2, 2)))
    raise KeyboardInterrupt  # a run stopped half-way through preprocessing

  with pytest.raises(KeyboardInterrupt):
    arraycache.build(path, failing)
  assert os.listdir(tmp_path) == []
  calls = []

  def fill(writer):
    calls.append(1)
    writer.append("x", np.ones((2, 2)))

  first = arraycache.build(path, fill)
  second = arraycache.build(path, fill)  # read back, not made again
  assert len(calls) == 1
  np.testing.assert_array_equal(first["x"], second["x"])


def test_a_damaged_cache_is_made_again(tmp_path):
  path = tmp_path / "c"
  arraycache.build(str(path), lambda w: w.append("x", np.arange(1000.0)))
  with open(path / "x.npy", "r+b") as f:
    f.truncate(100)
  assert arraycache.load(str(path)) is None
  again = arraycache.build(str(path), lambda w: w.append("x", np.arange(1000.0)))
  np.testing.assert_array_equal(again["x"], np.arange(1000.0))


def test_without_a_path_the_arrays_are_in_memory(tmp_path):
  arrays = arraycache.build(None, lambda w: w.append("x", np.arange(5)))
  assert not isinstance(arrays["x"], np.memmap)
  np.testing.assert_array_equal(arrays["x"], np.arange(5))


def test_ordered_map_keeps_order_and_runs_ahead_by_at_most_its_workers():
  started = []
  lock = threading.Lock()

  def fn(i):
    with lock:
      started.append(i)
    return i * i

  results = arraycache.ordered_map(fn, list(range(10)), workers=3)
  assert next(results) == 0
  time.sleep(0.2)
  assert set(started) <= {0, 1, 2}  # the first three at most: the rest wait for the consumer
  assert list(results) == [i * i for i in range(1, 10)]


def test_cached_volumes_are_stored_one_at_a_time_and_mapped(tmp_path):
  rng = np.random.default_rng(1)
  made = [volumes.Volume(id=f"case{i}", domain="site", spacing=(1.0, 0.5, 0.5 * i),
                         image=rng.normal(size=(3 + i, 4, 5)).astype(np.float32),
                         mask=(rng.random((3 + i, 4, 5)) > 0.5).astype(np.uint8))
          for i in range(3)]
  pulled = []

  def make():
    for v in made:
      pulled.append(v.id)
      yield v

  path = str(tmp_path / "site")
  first = volumes.cached_volumes(path, "site", make)
  second = volumes.cached_volumes(path, "site", make)
  assert pulled == ["case0", "case1", "case2"]  # made once, read back the second time
  for got in (first, second):
    assert [v.id for v in got] == [v.id for v in made]
    for a, b in zip(got, made):
      assert isinstance(a.image, np.memmap) and a.domain == "site"
      np.testing.assert_array_equal(a.image, b.image)
      np.testing.assert_array_equal(a.mask, b.mask)
      assert a.spacing == b.spacing and a.mask.dtype == np.uint8
