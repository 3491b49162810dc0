"""USPS handwritten digits (the digit domain read from a publisher's files; MNIST, optdigits
and MNIST-M ship with installable packages and need no builder)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from PIL import Image

from medda_jax.data import usps
from medda_jax.data.builders import png_bytes


class Usps(tfds.core.GeneratorBasedBuilder):
  """USPS 16 x 16 greyscale digits, train (7291) and test (2007) splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images and labels of both splits."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the LIBSVM files usps.bz2 and usps.t.bz2, or the ESL "
                                  "files zip.train.gz and zip.test.gz, in --manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="USPS handwritten digits (Hull, 1994).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(16, 16, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=10),
            # position in the published file (TFDS stores examples in key-hash order)
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps")

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._generate_examples(root, split) for split in ("train", "test")}

  def _generate_examples(self, root, split):
    images, labels = usps.load_usps(root, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": png_bytes(Image.fromarray(image)), "label": int(label), "index": i}
