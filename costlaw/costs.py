"""Analytic per-token FLOPs and memory of an Architecture, and the combined cost objective Z.

Conventions (values = number of scalars; bytes = values * bytes per element):
- FLOPs count matmuls only (2 per multiply-add); elementwise ops, softmax and norms are excluded.
- Inference at context T, per generated token: C = 2*N_matmul + 4*T*L*d_h*n_q (q.K^T and p.V);
  M = N_total + 2*T*L*d_h*n_kv values (weights plus the KV cache of one sequence).
- Training per token: 6*N_matmul + 12*L*d_h*n_q*T_bar, T_bar = T_train/2 for causal chunks
  (each query attends to half the chunk on average), T_train otherwise; per run = x D tokens.
- Costs are affine in T, so a float mean T gives the expected cost over a context distribution.

The paper's cost tables use: an FFN row that counts 2 matrices (our default ffn_matrices=3
counts SwiGLU as built; pass ffn_matrices=2 to the Architecture to reproduce the paper's
table), tied embeddings, and T_bar = T_train/2 (causal).
"""

import numbers
from dataclasses import dataclass
from typing import Sequence

from costlaw.arch import Architecture, param_counts

PAPER_TRAIN_CONTEXT = 8192

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1}
DTYPE_ALIASES: dict[str, str] = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16",
                                 "f16": "float16", "fp16": "float16", "fp8": "float8"}

MEMORY_UNITS: dict[str, float | None] = {"values": None, "bytes": 1.0, "GB": 1e9, "GiB": 2.0**30}
FLOPS_UNITS: dict[str, float] = {"FLOP": 1.0, "GFLOP": 1e9, "TFLOP": 1e12}


def canonical_dtype(dtype: str) -> str:
    """The DTYPE_BYTES name for `dtype` or one of its aliases."""
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPE_BYTES:
        allowed = ", ".join([*DTYPE_BYTES, *DTYPE_ALIASES])
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {allowed}")
    return name


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype` (aliases accepted)."""
    return DTYPE_BYTES[canonical_dtype(dtype)]


def _check_context(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive number of tokens")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive integer")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs split into the part independent of context and the part that grows with it."""

    time_invariant: float
    context: float

    @property
    def total(self) -> float:
        return self.time_invariant + self.context


def inference_flops(arch: Architecture, context: float) -> FlopCount:
    """Matmul FLOPs to generate one token with `context` tokens in the KV cache."""
    _check_context("context", context)
    attention = 4 * context * arch.num_layers * arch.head_dim * arch.num_q_heads
    return FlopCount(time_invariant=2 * param_counts(arch).matmul, context=attention)


def kv_cache_values(arch: Architecture, context: float, batch_size: int = 1) -> float:
    """Scalars in the K and V caches of `batch_size` sequences of length `context`."""
    _check_context("context", context)
    _check_count("batch_size", batch_size)
    return batch_size * 2 * context * arch.num_layers * arch.head_dim * arch.num_kv_heads


@dataclass(frozen=True)
class InferenceMemory:
    """Weights plus KV cache, in scalars and in bytes (weights and cache dtypes may differ)."""

    weight_values: float
    cache_values: float
    weight_bytes: float
    cache_bytes: float

    @property
    def total_values(self) -> float:
        return self.weight_values + self.cache_values

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.cache_bytes


def inference_memory(
    arch: Architecture,
    context: float,
    *,
    batch_size: int = 1,
    param_dtype: str = "bfloat16",
    kv_dtype: str = "bfloat16",
) -> InferenceMemory:
    """Memory to serve `batch_size` sequences at `context`: every stored weight once, a cache per sequence."""
    weights = param_counts(arch).total
    cache = kv_cache_values(arch, context, batch_size)
    return InferenceMemory(
        weight_values=weights,
        cache_values=cache,
        weight_bytes=weights * dtype_bytes(param_dtype),
        cache_bytes=cache * dtype_bytes(kv_dtype),
    )


def mean_attended_context(train_context: float, causal: bool = True) -> float:
    """T_bar: the mean number of keys a training query attends to."""
    _check_context("train_context", train_context)
    if not causal:
        return train_context
    # Integer halves stay integers so integer inputs give exact integer FLOP counts.
    return train_context // 2 if isinstance(train_context, int) and train_context % 2 == 0 else train_context / 2


def training_flops_per_token(arch: Architecture, train_context: float, *, causal: bool = True) -> FlopCount:
    """Forward plus backward matmul FLOPs per training token (backward = 2 x forward)."""
    t_bar = mean_attended_context(train_context, causal)
    attention = 12 * arch.num_layers * arch.head_dim * arch.num_q_heads * t_bar
    return FlopCount(time_invariant=6 * param_counts(arch).matmul, context=attention)


def training_flops(arch: Architecture, train_context: float, tokens: int, *, causal: bool = True) -> FlopCount:
    """Training FLOPs of a whole run over `tokens` tokens."""
    _check_count("tokens", tokens)
    per_token = training_flops_per_token(arch, train_context, causal=causal)
    return FlopCount(time_invariant=per_token.time_invariant * tokens, context=per_token.context * tokens)


@dataclass(frozen=True)
class TrainingMemory:
    """Training memory in bytes, by what holds it."""

    params: float
    grads: float
    optimizer: float
    master_weights: float
    activations: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.master_weights + self.activations


def training_memory(
    arch: Architecture,
    train_context: float,
    *,
    batch_size: int = 1,
    param_dtype: str = "bfloat16",
    optimizer_dtype: str = "float32",
    act_coeff: float = 1.0,
) -> TrainingMemory:
    """Bytes to train `arch`: params and grads in param_dtype, Adam's two moments in
    optimizer_dtype, a float32 master copy when params are narrower than 4 bytes, and
    activations of act_coeff * T*d*L values per sequence in param_dtype.

    The activation term is the paper's rough estimate (act_coeff=1); real usage depends on
    rematerialisation, fused kernels and sharding, so treat it as an order of magnitude.
    """
    _check_context("train_context", train_context)
    _check_count("batch_size", batch_size)
    if not act_coeff >= 0:
        raise ValueError(f"act_coeff={act_coeff!r} is not allowed; it must be >= 0")
    n = param_counts(arch).total
    width = dtype_bytes(param_dtype)
    activation_values = act_coeff * train_context * arch.d_model * arch.num_layers * batch_size
    return TrainingMemory(
        params=n * width,
        grads=n * width,
        optimizer=2 * n * dtype_bytes(optimizer_dtype),
        master_weights=n * DTYPE_BYTES["float32"] if width < DTYPE_BYTES["float32"] else 0,
        activations=activation_values * width,
    )


def _check_weights(lam: float, alpha: float, beta: float) -> None:
    if not 0 <= lam <= 1:
        raise ValueError(f"lam={lam!r} is not allowed; it must lie in [0, 1] (1 = memory only, 0 = FLOPs only)")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{name}={value!r} is not allowed; it must be a positive finite number")


def objective_z(memory: float, flops: float, lam: float = 0.9, alpha: float = 0.5, beta: float = 1 / 3) -> float:
    """Z = lam * memory**alpha + (1 - lam) * flops**beta, in whatever units the caller chose."""
    _check_weights(lam, alpha, beta)
    if memory < 0 or flops < 0:
        raise ValueError(f"memory={memory!r} and flops={flops!r} must both be >= 0")
    return lam * memory**alpha + (1 - lam) * flops**beta


@dataclass(frozen=True)
class ObjectiveSpec:
    """Weights and units of Z. Units change Z's value and hence the trade-off, so they are explicit.

    memory_unit: values, bytes, GB (1e9 bytes) or GiB.  flops_unit: FLOP, GFLOP or TFLOP.
    memory_dtype: bytes per value used for Z; None keeps the costed dtypes (params and KV
    cache may differ), which default to bfloat16, so the default is GB of bf16.
    """

    lam: float = 0.9
    alpha: float = 0.5
    beta: float = 1 / 3
    memory_unit: str = "GB"
    flops_unit: str = "GFLOP"
    memory_dtype: str | None = None

    def __post_init__(self) -> None:
        _check_weights(self.lam, self.alpha, self.beta)
        if self.memory_unit not in MEMORY_UNITS:
            raise ValueError(f"memory_unit={self.memory_unit!r} is not allowed; allowed: {', '.join(MEMORY_UNITS)}")
        if self.flops_unit not in FLOPS_UNITS:
            raise ValueError(f"flops_unit={self.flops_unit!r} is not allowed; allowed: {', '.join(FLOPS_UNITS)}")
        if self.memory_dtype is not None:
            object.__setattr__(self, "memory_dtype", canonical_dtype(self.memory_dtype))

    def memory_in_unit(self, values: float, nbytes: float) -> float:
        """Memory in memory_unit, from its size in scalars and in bytes."""
        scale = MEMORY_UNITS[self.memory_unit]
        if scale is None:
            return values
        if self.memory_dtype is not None:
            nbytes = values * DTYPE_BYTES[self.memory_dtype]
        return nbytes / scale

    def flops_in_unit(self, flops: float) -> float:
        return flops / FLOPS_UNITS[self.flops_unit]

    def z(self, memory_values: float, memory_bytes: float, flops: float) -> float:
        """Z for a memory (given in scalars and bytes) and a FLOP count."""
        return objective_z(
            self.memory_in_unit(memory_values, memory_bytes), self.flops_in_unit(flops),
            self.lam, self.alpha, self.beta,
        )


def _flops_dict(flops: FlopCount) -> dict:
    return {"time_invariant": flops.time_invariant, "context": flops.context, "total": flops.total}


def _inference_entry(
    arch: Architecture, context: float, batch_size: int, param_dtype: str, kv_dtype: str, objective: ObjectiveSpec
) -> dict:
    flops = inference_flops(arch, context)
    memory = inference_memory(arch, context, batch_size=batch_size, param_dtype=param_dtype, kv_dtype=kv_dtype)
    return {
        "context": context,
        "flops": _flops_dict(flops),
        "memory_values": {"weights": memory.weight_values, "kv_cache": memory.cache_values,
                          "total": memory.total_values},
        "memory_bytes": {"weights": memory.weight_bytes, "kv_cache": memory.cache_bytes,
                         "total": memory.total_bytes},
        "objective": {
            "memory": objective.memory_in_unit(memory.total_values, memory.total_bytes),
            "memory_unit": objective.memory_unit,
            "flops": objective.flops_in_unit(flops.total),
            "flops_unit": objective.flops_unit,
            "z": objective.z(memory.total_values, memory.total_bytes, flops.total),
        },
    }


def _plain(value: float) -> int | float:
    """numpy scalars become int or float so the report stays JSON-able; bad values pass through to validation."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def cost_report(
    arch: Architecture,
    context: float | Sequence[float],
    *,
    train_context: float | None = None,
    train_tokens: int | None = None,
    param_dtype: str = "bfloat16",
    kv_dtype: str = "bfloat16",
    objective: ObjectiveSpec = ObjectiveSpec(),
    batch_size: int = 1,
    causal: bool = True,
) -> dict:
    """Every cost of `arch` as a JSON-able dict.

    context: one inference context or several (one "inference" entry each, in order);
    a float mean context gives the expected cost. train_context None means the paper's
    8192. batch_size multiplies the KV cache and the training activations only.
    """
    contexts = [_plain(t) for t in ([context] if isinstance(context, numbers.Real) else context)]
    if not contexts:
        raise ValueError("context is empty; give at least one inference context length")
    param_dtype, kv_dtype = canonical_dtype(param_dtype), canonical_dtype(kv_dtype)
    t_train = PAPER_TRAIN_CONTEXT if train_context is None else _plain(train_context)
    train_tokens = None if train_tokens is None else _plain(train_tokens)
    counts = param_counts(arch)
    memory = training_memory(arch, t_train, batch_size=batch_size, param_dtype=param_dtype)
    return {
        "architecture": {
            "num_layers": arch.num_layers, "d_model": arch.d_model, "num_q_heads": arch.num_q_heads,
            "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "vocab_size": arch.vocab_size,
            "d_ff": arch.d_ff, "tie_embeddings": arch.tie_embeddings, "ffn_matrices": arch.ffn_matrices,
        },
        "params": {
            "total": counts.total, "embedding": counts.embedding, "non_embedding": counts.non_embedding,
            "matmul": counts.matmul, "attention_per_layer": counts.attention_per_layer,
            "ffn_per_layer": counts.ffn_per_layer, "norms": counts.norms,
        },
        "dtypes": {"params": param_dtype, "kv_cache": kv_dtype, "optimizer": "float32"},
        "batch_size": batch_size,
        "objective": {
            "lam": objective.lam, "alpha": objective.alpha, "beta": objective.beta,
            "memory_unit": objective.memory_unit, "flops_unit": objective.flops_unit,
            "memory_dtype": objective.memory_dtype,
        },
        "inference": [
            _inference_entry(arch, t, batch_size, param_dtype, kv_dtype, objective) for t in contexts
        ],
        "training": {
            "context": t_train,
            "causal": causal,
            "mean_attended_context": mean_attended_context(t_train, causal),
            "flops_per_token": _flops_dict(training_flops_per_token(arch, t_train, causal=causal)),
            "tokens": train_tokens,
            "flops_per_run": (
                None if train_tokens is None
                else _flops_dict(training_flops(arch, t_train, train_tokens, causal=causal))
            ),
            "memory_bytes": {
                "params": memory.params, "grads": memory.grads, "optimizer": memory.optimizer,
                "master_weights": memory.master_weights, "activations": memory.activations,
                "total": memory.total,
            },
        },
        "conventions": {
            "ffn_matrices": f"{arch.ffn_matrices} FFN matrices costed (3 = SwiGLU as built, 2 = the paper's table)",
            "tie_embeddings": "output projection shares the input table" if arch.tie_embeddings
            else "separate lm_head [d, V]",
            "flops": "matmul FLOPs only (2 per multiply-add), elementwise ops excluded",
            "matmul_params": "layer projections + output projection V*d once; norms and input lookup excluded",
            "inference_flops": "2*N_matmul + 4*T*L*d_h*n_q per generated token",
            "inference_memory": "N_total + batch*2*T*L*d_h*n_kv values (weights + KV cache)",
            "training_flops": "6*N_matmul + 12*L*d_h*n_q*T_bar per token; T_bar = T_train/2 if causal else T_train",
            "training_memory": "params + grads (param dtype) + Adam 2 moments (float32) + float32 master "
            "weights if params < 4 bytes + activations ~1.0*T*d*L values per sequence (rough)",
            "objective": "Z = lam*M^alpha + (1-lam)*C^beta with M, C in the stated units",
        },
    }
