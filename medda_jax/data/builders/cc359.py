"""Calgary-Campinas-359: one example per T1 volume with its silver-standard brain mask."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from medda_jax.data import cc359


class Cc359(tfds.core.GeneratorBasedBuilder):
  """CC359 from either published layout (meta.csv release or original download), volumes as
  stored (no resampling: the loader's preprocessing is applied when reading)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Volumes, masks, scanner domain and spacing."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = cc359._LAYOUT

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="CC359 T1 head MRI from six scanners with silver-standard brain masks.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "domain": tfds.features.ClassLabel(names=list(cc359.CC359_DOMAINS)),
            "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB),
            # as stored (the loader resamples it before binarising at 0.5)
            "mask": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32,
                                         encoding=tfds.features.Encoding.ZLIB),
            # mm along the stored axes: meta.csv's x, y, z, else the NIfTI header's; float64
            # so that the loader's resampling factors are those of the files
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float64),
        }),
        homepage="https://sites.google.com/view/calgary-campinas-dataset/",
        license="CC BY 4.0 (as published)")

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(str(dl_manager.manual_dir))}

  def _generate_examples(self, root):
    _, cases = cc359.cc359_cases(root)
    for case in cases:
      image, mask, spacing = case.read()
      yield case.id, {"id": case.id, "domain": case.domain, "image": image, "mask": mask,
                      "spacing": np.asarray(spacing, np.float64)}
