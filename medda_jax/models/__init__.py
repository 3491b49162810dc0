"""Flax linen models, NHWC."""
