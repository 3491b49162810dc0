"""Prepares a medda_jax TFDS dataset from its manual folder, as array_record files.

  python -m medda_jax.data.builders.build medical_decathlon/task02_heart \
      --manual_dir=/data/msd [--data_dir=~/tensorflow_datasets]

(`tfds build` does the same given the builder module, but it imports TensorFlow.)
"""

from __future__ import annotations

import argparse
import os
import sys

BUILDERS = {
    "medical_decathlon": "medda_jax.data.builders.medical_decathlon:MedicalDecathlon",
    "busi": "medda_jax.data.builders.breast_ultrasound:Busi",
    "breast_lesions_usg": "medda_jax.data.builders.breast_ultrasound:BreastLesionsUsg",
    "cc359": "medda_jax.data.builders.cc359:Cc359",
    "usps": "medda_jax.data.builders.usps:Usps",
}


def builder(name: str, data_dir: str | None = None):
  """The builder for `name[/config]`, e.g. `medical_decathlon/task02_heart`."""
  import importlib

  base, _, config = name.partition("/")
  if base not in BUILDERS:
    raise SystemExit(f"error: unknown dataset {base!r}; known: {', '.join(BUILDERS)}")
  module, cls = BUILDERS[base].split(":")
  builder_cls = getattr(importlib.import_module(module), cls)
  configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
  if configs and config not in configs:
    raise SystemExit(f"error: {base} needs a config, one of: {', '.join(configs)} "
                     f"(e.g. {base}/{configs[0]})")
  return builder_cls(config=config or None, data_dir=data_dir, file_format="array_record")


def prepare(name: str, manual_dir: str, data_dir: str | None = None):
  import tensorflow_datasets as tfds

  b = builder(name, data_dir)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", help="dataset[/config], e.g. medical_decathlon/task02_heart")
  parser.add_argument("--manual_dir", required=True, help="the publisher's folder")
  parser.add_argument("--data_dir", default=None, help="TFDS data folder (TFDS default)")
  args = parser.parse_args(argv)
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    print("error: tensorflow-datasets is not installed: pip install 'medda_jax[tfds]'",
          file=sys.stderr)
    return 2
  if not os.path.isdir(args.manual_dir):
    print(f"error: --manual_dir {args.manual_dir} is not a folder", file=sys.stderr)
    return 2
  from medda_jax.errors import MeddaError
  try:
    b = prepare(args.name, args.manual_dir, args.data_dir)
  except MeddaError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  print(f"prepared {b.info.full_name} in {b.data_dir}: "
        + ", ".join(f"{s} {v.num_examples}" for s, v in b.info.splits.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
