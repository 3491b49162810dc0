"""The image pool of CycleGAN's reference (Shrivastava et al., 2017), inside the train state.

A critic judges fakes drawn partly from a history of earlier generators, which damps the
oscillation of the adversarial game. The reference keeps a Python list of up to 50
images and, per image of a batch: while the list is not full, appends the image and
returns it; once full, with probability 0.5 returns a random stored image and stores the
new one in its place, otherwise returns the new image.

Here the pool is a fixed-size buffer `images [size, ...]` with a fill counter, a pytree that
lives in the GAN state (checkpointed and restored with it, so a resumed run draws what an
uninterrupted one would). `query` keeps the per-image semantics with a `lax.scan` over the
batch, each image's coin and slot drawn from its own key, so it runs inside a jitted,
scanned training step. A pool of size 0 returns the batch unchanged.

SIFA's TensorFlow pool keeps whole batches instead (50 of them): the same rule applied to
a batch as one item. `query_batch` is that policy on a pool whose items are batches,
`ImagePool.create(size, (batch, H, W, C))`.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ImagePool:
  images: jax.Array  # [size, H, W, C]; slots >= count are unused
  count: jax.Array   # int32: images stored so far (at most size)

  @classmethod
  def create(cls, size: int, image_shape, dtype=jnp.float32) -> "ImagePool":
    return cls(images=jnp.zeros((size, *image_shape), dtype), count=jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.images.shape[0]


def image_draws(key: jax.Array, batch: int, size: int) -> tuple[jax.Array, jax.Array]:
  """Per image of a batch: the uniform coin and the slot the reference would draw."""
  keys = jax.random.split(key, batch)
  coin = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)
  slot = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, size))(keys)
  return coin, slot


def query(pool: ImagePool, images: jax.Array, key: jax.Array) -> tuple[ImagePool, jax.Array]:
  """(updated pool, the images the critic judges): one per input image, in order."""
  if pool.size == 0:
    return pool, images
  coin, slot = image_draws(key, images.shape[0], pool.size)

  def one(p: ImagePool, xs):
    image, coin, slot = xs
    image = image.astype(p.images.dtype)
    filling = p.count < p.size
    swap = ~filling & (coin > 0.5)
    index = jnp.where(filling, p.count, slot)  # the slot written (filling or swapping)
    stored = p.images[index]
    out = jnp.where(swap, stored, image)
    write = filling | swap
    new_images = p.images.at[index].set(jnp.where(write, image, stored))
    return ImagePool(new_images, p.count + filling.astype(jnp.int32)), out

  pool, out = jax.lax.scan(one, pool, (jax.lax.stop_gradient(images), coin, slot))
  return pool, out.astype(images.dtype)


def query_batch(pool: ImagePool, batch: jax.Array, key: jax.Array) -> tuple[ImagePool, jax.Array]:
  """SIFA's batch-level pool: the whole batch is one item (stored, or swapped with a stored
  batch with probability 0.5 once the pool is full); the pool's items are [batch, ...]."""
  if pool.size and pool.images.shape[1:] != batch.shape:
    raise ValueError(f"the pool holds batches of shape {pool.images.shape[1:]}, got "
                     f"{batch.shape}")
  pool, out = query(pool, batch[None], key)
  return pool, out[0]
