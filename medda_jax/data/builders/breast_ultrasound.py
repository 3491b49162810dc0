"""Breast ultrasound: BUSI (Al-Dhabyani et al., 2020) and BrEaST-Lesions-USG (Pawłowska et
al., 2024), one example per image at its published resolution, as greyscale PNG."""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds
from PIL import Image

from medda_jax.data import breast_us
from medda_jax.data.builders import png_bytes
from medda_jax.errors import DataError


def _grey_png(path: pathlib.Path) -> bytes:
  """The image as 8-bit greyscale PNG bytes (the releases mix greyscale and RGB files)."""
  try:
    with Image.open(path) as image:
      grey = image.convert("L")
  except OSError as e:
    raise DataError(f"cannot read image {path}: {e}") from e
  return png_bytes(grey)


def _features(classes) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "label": tfds.features.ClassLabel(names=list(classes)),  # the published class
      # the loaders' binary coding: malignant 0, benign (normal included) 1
      "malignant_vs_benign": tfds.features.ClassLabel(names=["malignant", "benign"]),
      "file": tfds.features.Text(),
  })


def _example(folder: pathlib.Path, name: str, cls: str, shown: str) -> dict:
  return {"image": _grey_png(folder / name), "label": cls,
          "malignant_vs_benign": int(cls != "malignant"), "file": shown}


class Busi(tfds.core.GeneratorBasedBuilder):
  """Breast Ultrasound Images Dataset: benign, normal and malignant images (masks not
  included)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images and published classes."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = breast_us._BUSI_LAYOUT

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="BUSI breast ultrasound images with their published classes.",
        features=_features(breast_us.BUSI_CLASSES),
        homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        license="CC0 1.0 (as published)")

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(dl_manager.manual_dir)}

  def _generate_examples(self, root):
    folder, names, classes = breast_us.busi_files(root, include_normal=True)
    for name, cls in zip(names, classes):
      yield name, _example(folder, name, cls, name)


class BreastLesionsUsg(tfds.core.GeneratorBasedBuilder):
  """BrEaST-Lesions-USG (TCIA): images with the clinical table's classification."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images and the clinical table's classification."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = breast_us._BREAST_LAYOUT

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="BrEaST-Lesions-USG breast ultrasound images and classification.",
        features=_features(breast_us.BREAST_CLASSES),
        homepage="https://www.cancerimagingarchive.net/collection/breast-lesions-usg/",
        license="CC BY 4.0 (as published)")

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(dl_manager.manual_dir)}

  def _generate_examples(self, root):
    folder, names, classes, shown = breast_us.breast_files(root, normal="benign")
    for name, cls, rel in zip(names, classes, shown):
      yield name, _example(folder, name, cls, rel)

