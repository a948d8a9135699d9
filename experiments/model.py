"""Llama-3 style GQA decoder in Flax NNX, with query heads, KV heads and head size decoupled from d_model."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_dict

import kernels

# Logical axis names carried by every parameter (metadata key "logical_axes"); the sharding
# rules table maps them to mesh axes. Kept out of flax's out_sharding on purpose: flax shards
# such annotations eagerly at creation and needs a mesh for it, while this model must also
# build with no mesh at all (single device, jax.eval_shape).
VOCAB, EMBED, Q_HEADS, KV_HEADS, HEAD_DIM, MLP = "vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Plain model hyper-parameters (a resolved ``config.model`` plus the attention impl)."""

    num_layers: int
    d_model: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    tie_embeddings: bool = True
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str | None = None  # None: kernels choose by backend

    @classmethod
    def from_config(cls, config: config_dict.ConfigDict) -> "ModelConfig":
        """From a validated run config (see experiments.validate)."""
        impl = None if config.attention_impl == "auto" else config.attention_impl
        fields = {f.name for f in dataclasses.fields(cls)} - {"attention_impl"}
        return cls(**{k: v for k, v in config.model.to_dict().items() if k in fields}, attention_impl=impl)


class LayerCache(NamedTuple):
    """Keys and values of one layer for every cached position: each [B, S_max, n_kv, d_h]."""

    k: jax.Array
    v: jax.Array


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float, dtype) -> nnx.Param:
    value = std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding on the last axis (rotate-half layout). x [B, T, H, d], positions [B, T]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [B, T, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(EMBED,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    """Projections d -> n_q*d_h (queries), d -> n_kv*d_h (keys, values), n_q*d_h -> d (output)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, hq, hkv, dh, pd = cfg.d_model, cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
        self.cfg = cfg
        self.wq = _param(rngs, (d, hq, dh), (EMBED, Q_HEADS, HEAD_DIM), d**-0.5, pd)
        self.wk = _param(rngs, (d, hkv, dh), (EMBED, KV_HEADS, HEAD_DIM), d**-0.5, pd)
        self.wv = _param(rngs, (d, hkv, dh), (EMBED, KV_HEADS, HEAD_DIM), d**-0.5, pd)
        # Residual-branch outputs shrink with depth so the residual stream's variance stays O(1).
        self.wo = _param(rngs, (hq, dh, d), (Q_HEADS, HEAD_DIM, EMBED), (hq * dh * 2 * cfg.num_layers) ** -0.5, pd)

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        dt = x.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.wq[...].astype(dt))
        k = jnp.einsum("btd,dhk->bthk", x, self.wk[...].astype(dt))
        v = jnp.einsum("btd,dhk->bthk", x, self.wv[...].astype(dt))
        theta = self.cfg.rope_theta
        return rope(q, positions, theta), rope(k, positions, theta), v

    def out(self, o: jax.Array) -> jax.Array:
        return jnp.einsum("bthk,hkd->btd", o, self.wo[...].astype(o.dtype))

    def __call__(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, LayerCache]:
        q, k, v = self.qkv(x, positions)
        o = kernels.attention(q, k, v, causal=True, impl=self.cfg.attention_impl)
        return self.out(o), LayerCache(k, v)


class SwiGLU(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, pd = cfg.d_model, cfg.d_ff, cfg.param_dtype
        self.w_gate = _param(rngs, (d, f), (EMBED, MLP), d**-0.5, pd)
        self.w_up = _param(rngs, (d, f), (EMBED, MLP), d**-0.5, pd)
        self.w_down = _param(rngs, (f, d), (MLP, EMBED), (f * 2 * cfg.num_layers) ** -0.5, pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        h = jax.nn.silu(x @ self.w_gate[...].astype(dt)) * (x @ self.w_up[...].astype(dt))
        return h @ self.w_down[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
        self.mlp = SwiGLU(cfg, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, LayerCache]:
        h, kv = self.attn(self.attn_norm(x), positions)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv

    def decode(self, x: jax.Array, cache: LayerCache, lengths: jax.Array) -> tuple[jax.Array, LayerCache]:
        """One new token per sequence at position lengths[b]; x [B, 1, d]."""
        q, k, v = self.attn.qkv(self.attn_norm(x), lengths[:, None])
        batch = jnp.arange(x.shape[0])
        cache = LayerCache(cache.k.at[batch, lengths].set(k[:, 0]), cache.v.at[batch, lengths].set(v[:, 0]))
        o = kernels.decode_attention(q[:, 0], cache.k, cache.v, lengths + 1, impl=self.attn.cfg.attention_impl)
        x = x + self.attn.out(o[:, None])
        return x + self.mlp(self.mlp_norm(x)), cache


class Transformer(nnx.Module):
    """Decoder-only LM: embedding, L pre-norm blocks, final RMSNorm, output projection (tied or not)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, vocab, pd = cfg.d_model, cfg.vocab_size, cfg.param_dtype
        # std 1/sqrt(d) keeps tied logits at unit scale after the final norm.
        self.embedding = _param(rngs, (vocab, d), (VOCAB, EMBED), d**-0.5, pd)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(d, cfg.norm_eps, pd)
        self.lm_head = None if cfg.tie_embeddings else _param(rngs, (d, vocab), (EMBED, VOCAB), d**-0.5, pd)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.cfg.dtype)

    def _logits(self, x: jax.Array) -> jax.Array:
        x = self.final_norm(x)
        if self.lm_head is None:
            w = self.embedding[...].astype(x.dtype)
            return jnp.einsum("btd,vd->btv", x, w, preferred_element_type=jnp.float32)
        return jnp.einsum("btd,dv->btv", x, self.lm_head[...].astype(x.dtype), preferred_element_type=jnp.float32)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, T] int -> float32 logits [B, T, V] (causal)."""
        logits, _ = self.forward_with_kv(tokens)
        return logits

    def forward_with_kv(self, tokens: jax.Array) -> tuple[jax.Array, list[LayerCache]]:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self._embed(tokens)
        kvs = []
        for layer in self.layers:
            x, kv = layer(x, positions)
            kvs.append(kv)
        return self._logits(x), kvs

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> list[LayerCache]:
        """Zeroed KV cache: per layer, k and v of shape [B, max_len, n_kv, d_h]."""
        cfg = self.cfg
        shape = (batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.dtype
        return [LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]

    def prefill(self, tokens: jax.Array, cache: list[LayerCache]) -> tuple[jax.Array, list[LayerCache]]:
        """Run the prompt tokens [B, T] and write their K/V at positions 0..T-1; returns logits [B, T, V]."""
        logits, kvs = self.forward_with_kv(tokens)
        cache = [
            LayerCache(c.k.at[:, : kv.k.shape[1]].set(kv.k.astype(c.k.dtype)), c.v.at[:, : kv.v.shape[1]].set(kv.v.astype(c.v.dtype)))
            for c, kv in zip(cache, kvs)
        ]
        return logits, cache

    def decode_step(
        self, tokens: jax.Array, cache: list[LayerCache], lengths: jax.Array
    ) -> tuple[jax.Array, list[LayerCache]]:
        """tokens [B] at positions lengths [B] (tokens already cached per sequence) -> logits [B, V]."""
        x = self._embed(tokens[:, None])
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer.decode(x, layer_cache, lengths)
            new_cache.append(layer_cache)
        return self._logits(x)[:, 0], new_cache


def count_params(model: nnx.Module) -> int:
    """Number of scalars in every nnx.Param of the model."""
    state = nnx.state(model, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def logical_axes(model: nnx.Module) -> dict[str, tuple[str, ...]]:
    """Parameter path -> logical axis names, for the sharding rules and for inspection."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out["/".join(map(str, path))] = var.get_metadata("logical_axes")
    return out
