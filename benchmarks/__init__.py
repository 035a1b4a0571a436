"""Benchmarks and cross-checks of hvae_jax: a PyTorch reference implementation, throughput and end-to-end comparisons.

Nothing in `hvae_jax` imports this package; it sits beside the library and only uses its public functions.
"""
