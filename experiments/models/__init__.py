"""Pretrained models rebuilt in pure JAX, for the real-model studies."""
