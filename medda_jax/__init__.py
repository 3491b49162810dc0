"""medda_jax: domain adaptation and few-shot transfer for medical imaging in JAX."""

__version__ = "0.1.0"
