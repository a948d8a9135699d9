"""Held-out loss at several context lengths, token-weighted, with the number of tokens behind each."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class EvalShape:
    """One context length's held-out batches: num_batches arrays of [batch_size, context + 1] tokens."""

    context: int
    batch_size: int
    num_batches: int


def contexts(seq_len: int, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """T/4, T/2 and T (the training context), plus any extra lengths, sorted and without repeats."""
    return tuple(sorted({max(1, seq_len // 4), max(1, seq_len // 2), seq_len, *extra}))


def plan(config: config_dict.ConfigDict) -> tuple[EvalShape, ...]:
    """The evaluation shapes of a validated config. Every batch holds about as many tokens as a
    training batch (more sequences at short contexts, at least one at long ones), so a longer
    context needs about the activation memory of a training forward pass, attention aside."""
    budget = config.batch_size * config.seq_len
    return tuple(
        EvalShape(ctx, max(1, budget // ctx), config.eval_batches)
        for ctx in contexts(config.seq_len, config.eval_contexts)
    )


@functools.partial(jax.jit, static_argnums=0)
def _nll_sum(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array) -> jax.Array:
    # A sum, not a mean, so batches of different sizes weigh by their tokens. One compilation
    # per (graphdef, batch shape): the cache is reused by every later evaluation.
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).sum()


def evaluate(
    graphdef: nnx.GraphDef, params: Any, batches_by_context: Mapping[int, Iterable[Any]]
) -> list[dict[str, float | int]]:
    """Mean next-token cross-entropy (nats per token) at each context length.

    batches_by_context maps a context length to int32 token arrays [B, context + 1] (B may vary
    between batches). Returns one row {"context", "loss", "tokens"} per context, in the mapping's
    order, where tokens counts the predicted positions. Attention runs with the impl the model
    was built with: a config's "auto" takes the blocked XLA path from 2048 keys on CPU, so long
    contexts never allocate T x T scores there.
    """
    rows = []
    for context, batches in batches_by_context.items():
        sums, tokens = [], 0
        for batch in batches:
            if batch.ndim != 2 or batch.shape[1] != context + 1:
                raise ValueError(f"context {context} needs token batches [B, {context + 1}]; got shape {tuple(batch.shape)}")
            sums.append(_nll_sum(graphdef, params, batch))  # dispatched now, read below
            tokens += batch.shape[0] * context
        if not tokens:
            raise ValueError(f"no held-out batches for context {context}")
        total = float(np.sum(np.asarray(jax.device_get(sums), np.float64)))
        rows.append({"context": context, "loss": total / tokens, "tokens": tokens})
    return rows
