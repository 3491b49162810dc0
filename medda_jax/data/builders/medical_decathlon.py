"""Medical Segmentation Decathlon: one config per task, one example per training case."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import tensorflow_datasets as tfds

from medda_jax.data import msd
from medda_jax.errors import DataError


class MedicalDecathlon(tfds.core.GeneratorBasedBuilder):
  """The labelled training cases of an MSD task, volumes as published (channel last)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Volumes and label maps of the training cases as published."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=msd.tfds_config(task), description=task)
                     for task in msd.MSD_TASKS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = msd._layout() + (
      "\nDownload the task tarballs from http://medicaldecathlon.com/, extract them into one "
      "folder and pass it as --manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Medical Segmentation Decathlon training cases (Antonelli et al., 2022).",
        features=tfds.features.FeaturesDict({
            "case": tfds.features.Text(),
            # [x, y, z, channel] float32 intensities as stored (channel 1 for 3-D tasks).
            "image": tfds.features.Tensor(shape=(None, None, None, None), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB),
            # [x, y, z] integer label map.
            "label": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        }),
        homepage="http://medicaldecathlon.com/",
        license="CC-BY-SA 4.0 (the data); see the task's dataset.json",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    task = self.builder_config.description
    return {"train": self._generate_examples(os.path.join(dl_manager.manual_dir, task), task)}

  def _generate_examples(self, task_dir: str, task: str):
    for case in msd._read_cases(task_dir):  # checks the layout, names what is missing
      case.check(msd.KNOWN_TASKS[task])
      image = case.read_image()
      if image.ndim == 3:
        image = image[..., None]
      label = case.read_label()  # integer values, as the loader reads them
      if label.min() < 0 or label.max() > 255:
        raise DataError(f"{case.label}: label values must lie in [0, 255], got "
                        f"[{label.min()}, {label.max()}]")
      label = label.astype(np.uint8)
      zooms = nib.load(case.image).header.get_zooms()[:3]
      yield case.stem, {"case": case.stem, "image": image, "label": label,
                        "spacing": np.asarray(zooms, np.float32)}
