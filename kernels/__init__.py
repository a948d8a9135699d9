"""Attention kernels for grouped-query attention: XLA reference, blocked XLA, Pallas flash and decode kernels, and dispatch (jax only)."""

from kernels.dispatch import attention, available_impls, decode_attention

__all__ = ["attention", "decode_attention", "available_impls"]
