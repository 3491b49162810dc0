"""Data layer: published-layout loaders, embedded demo sets, task samplers."""
