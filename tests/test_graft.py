"""engine/graft.py: grafting a pre-trained subtree into another network's parameters."""

from __future__ import annotations

import numpy as np
import pytest

from medda_jax.engine.graft import graft
from medda_jax.errors import DataError


def _trees():
  source = {"encoder": {"a": {"kernel": np.full((2, 3), 1.0)}, "b": np.full((4,), 2.0),
                        "token": np.full((1, 3), 3.0)},
            "decoder": {"kernel": np.full((3, 3), 4.0)}}
  target = {"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros((5,)), "head": np.zeros((3, 1))}
  return source, target


def test_shared_paths_are_copied_the_rest_kept_and_resize_rules_applied():
  source, target = _trees()
  def resize(path, value, shape):  # pads b with its last value; knows no other path
    return np.concatenate([value, value[-1:]]) if path == "b" else None
  new, paths = graft(target, source, prefix="encoder", skip=("token",), resize=resize)
  assert paths == ["a/kernel", "b"]
  np.testing.assert_array_equal(new["a"]["kernel"], source["encoder"]["a"]["kernel"])
  np.testing.assert_array_equal(new["b"], np.full((5,), 2.0))
  np.testing.assert_array_equal(new["head"], target["head"])
  assert "token" not in new and "decoder" not in new
  np.testing.assert_array_equal(target["a"]["kernel"], 0.0)  # the target itself is untouched


def test_mismatches_end_in_one_line():
  source, target = _trees()
  with pytest.raises(DataError, match=r"parameter b has shape \(4,\) there and \(5,\) here"):
    graft(target, source, prefix="encoder", where="checkpoint X")
  with pytest.raises(DataError, match="has no parameters under 'backbone'"):
    graft(target, source, prefix="backbone")
  with pytest.raises(DataError, match="shares no parameter"):
    graft({"other": np.zeros(1)}, source, prefix="encoder")
