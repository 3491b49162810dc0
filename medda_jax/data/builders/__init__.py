"""TFDS dataset builders for the published datasets the loaders read (the `tfds` extra).

Each builder reads the publisher's layout from a manual folder with the same code as the
loader, and writes array_record files, so a dataset is prepared once and read back with
`tfds.data_source(...)` (random access, which grain takes directly) without TensorFlow:

  python -m medda_jax.data.builders.build medical_decathlon/task02_heart \
      --manual_dir=/data/msd --data_dir=~/tensorflow_datasets
  src = tfds.data_source("medical_decathlon/task02_heart", split="train", data_dir=...)
  ds = grain.MapDataset.source(src)

Only this package imports tensorflow_datasets; nothing else in medda_jax needs it.
"""


def png_bytes(image) -> bytes:
  """A PIL image encoded as PNG: what `tfds.features.Image` stores without TensorFlow."""
  import io
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()
