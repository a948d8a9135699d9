"""Attention kernels for grouped-query attention: XLA reference and backend dispatch (jax only)."""

from kernels.dispatch import attention, available_impls, decode_attention

__all__ = ["attention", "decode_attention", "available_impls"]
