"""Transformer shapes, their exact parameter counts, and the paper's model ladder."""

import numbers
from dataclasses import dataclass

PAPER_HEAD_DIM = 64
PAPER_VOCAB_SIZE = 50304  # GPT-2's 50257, padded to a multiple of 64


def _nearest_multiple(numerator: int, denominator: int, multiple: int) -> int:
    """Nearest multiple of `multiple` to numerator/denominator, halves rounded up, in exact integers."""
    step = denominator * multiple
    return multiple * ((2 * numerator + step) // (2 * step))


def default_d_ff(d_model: int, multiple: int = 32) -> int:
    """SwiGLU width: 8*d_model/3 rounded to the nearest multiple of `multiple` (never below one multiple).

    8d/3 keeps a 3-matrix SwiGLU block at the parameter count of a 2-matrix 4d MLP.
    """
    if d_model <= 0 or multiple <= 0:
        raise ValueError(f"d_model={d_model} and multiple={multiple} must both be positive integers")
    return max(multiple, _nearest_multiple(8 * d_model, 3, multiple))


def mha_num_heads(d_model: int, head_dim: int) -> int:
    """Head count of multi-head attention whose heads together span d_model."""
    if head_dim <= 0:
        raise ValueError(f"head_dim={head_dim} is not allowed; it must be a positive integer")
    if d_model % head_dim:
        raise ValueError(
            f"d_model={d_model} is not a multiple of head_dim={head_dim}, so there is no default "
            f"head count; pass num_q_heads (and num_kv_heads) explicitly"
        )
    return d_model // head_dim


@dataclass(frozen=True)
class Architecture:
    """A decoder-only Llama-style transformer (pre-norm RMSNorm, SwiGLU, no biases).

    The attention width num_q_heads*head_dim is decoupled from d_model. `ffn_matrices`
    is a costing convention: 3 is SwiGLU as built, 2 reproduces the paper's cost table.
    """

    num_layers: int
    d_model: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    d_ff: int | None = None
    tie_embeddings: bool = True
    ffn_matrices: int = 3

    def __post_init__(self) -> None:
        # Frozen dataclass: normalising numpy integers to int and resolving d_ff are the
        # only writes after init, so every Architecture holds plain, JSON-able ints.
        for name in ("num_layers", "d_model", "num_q_heads", "num_kv_heads", "head_dim", "vocab_size"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        d_ff = default_d_ff(self.d_model) if self.d_ff is None else _positive_int("d_ff", self.d_ff)
        object.__setattr__(self, "d_ff", d_ff)
        if self.num_q_heads % self.num_kv_heads:
            divisors = [k for k in range(1, self.num_q_heads + 1) if self.num_q_heads % k == 0]
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_q_heads={self.num_q_heads}; "
                f"allowed num_kv_heads: {', '.join(map(str, divisors))}"
            )
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings={self.tie_embeddings!r} must be True or False")
        if isinstance(self.ffn_matrices, bool) or self.ffn_matrices not in (2, 3):
            raise ValueError(
                f"ffn_matrices={self.ffn_matrices!r} is not allowed; use 3 (SwiGLU as built) "
                f"or 2 (the paper's cost-table convention)"
            )
        object.__setattr__(self, "ffn_matrices", int(self.ffn_matrices))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive integer")
    return int(value)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of an Architecture, each in number of scalars.

    attention_per_layer: wq, wk, wv, wo.  ffn_per_layer: ffn_matrices * d_model * d_ff.
    norms: every RMSNorm scale (two per layer and the final one).
    embedding: the V x d table, doubled when the output projection is untied.
    non_embedding: total - embedding (norm scales included); the N of the scaling fits.
    matmul: weights that enter a matmul per token: all layer projections plus the
        output projection V*d once, tied or not (the input lookup is not a matmul).
    """

    attention_per_layer: int
    ffn_per_layer: int
    norms: int
    embedding: int
    non_embedding: int
    total: int
    matmul: int


def param_counts(arch: Architecture) -> ParamCounts:
    """Exact parameter counts of `arch`, matching the Flax model's parameter tree."""
    d, d_h = arch.d_model, arch.head_dim
    attention = d * d_h * (2 * arch.num_q_heads + 2 * arch.num_kv_heads)
    ffn = arch.ffn_matrices * d * arch.d_ff
    layer_matrices = arch.num_layers * (attention + ffn)
    norms = (2 * arch.num_layers + 1) * d
    table = arch.vocab_size * d
    embedding = table if arch.tie_embeddings else 2 * table
    non_embedding = layer_matrices + norms
    return ParamCounts(
        attention_per_layer=attention,
        ffn_per_layer=ffn,
        norms=norms,
        embedding=embedding,
        non_embedding=non_embedding,
        total=non_embedding + embedding,
        matmul=layer_matrices + table,
    )


@dataclass(frozen=True)
class LadderShape:
    """One named model shape from the paper; lr and tokens exist only for trained sizes."""

    name: str
    num_layers: int
    d_model: int
    max_lr: float | None = None
    train_tokens: int | None = None


# The paper's labels track non-embedding counts only approximately: with SwiGLU
# (ffn_matrices=3), MHA and d_h=64 they count 3.12M, 18.98M, 84.95M, 150.6M, 200.8M,
# 472.9M, 679.5M and 1.02B (the "1.2B" label is about 15% high).
PAPER_LADDER: dict[str, LadderShape] = {
    shape.name: shape
    for shape in (
        LadderShape("3M", 4, 256, 1e-3, 60_000_000),
        LadderShape("19M", 6, 512, 1e-3, 380_000_000),
        LadderShape("85M", 12, 768, 1e-3, 1_700_000_000),
        LadderShape("150M", 12, 1024, 1e-3, 3_000_000_000),
        LadderShape("200M", 16, 1024, 5e-4, 4_000_000_000),
        LadderShape("470M", 24, 1280, 5e-4, 9_400_000_000),
        LadderShape("680M", 24, 1536, 2e-4, 13_600_000_000),
        LadderShape("1.2B", 36, 1536, 2e-4, 24_000_000_000),
        LadderShape("1.8B", 36, 2048),
        LadderShape("4B", 48, 2560),
        LadderShape("6B", 54, 3072),
        LadderShape("13B", 64, 4096),
        LadderShape("33B", 72, 6144),
        LadderShape("64B", 80, 8192),
    )
}


def ladder_shape(name: str) -> LadderShape:
    """The paper's shape called `name`; ValueError listing the known names otherwise."""
    try:
        return PAPER_LADDER[name]
    except KeyError:
        raise ValueError(
            f"unknown ladder name {name!r}; allowed: {', '.join(PAPER_LADDER)}"
        ) from None


def paper_architecture(
    name: str,
    num_q_heads: int | None = None,
    num_kv_heads: int | None = None,
    head_dim: int = PAPER_HEAD_DIM,
    vocab_size: int = PAPER_VOCAB_SIZE,
    tie_embeddings: bool = True,
) -> Architecture:
    """The ladder shape `name` as an Architecture; heads default to MHA with n_q = d // head_dim.

    GQA variants keep the ladder's L and d. Labels like "85M" approximate the
    non-embedding count; see PAPER_LADDER for the counted values.
    """
    shape = ladder_shape(name)
    n_q = mha_num_heads(shape.d_model, head_dim) if num_q_heads is None else num_q_heads
    return Architecture(
        num_layers=shape.num_layers,
        d_model=shape.d_model,
        num_q_heads=n_q,
        num_kv_heads=n_q if num_kv_heads is None else num_kv_heads,
        head_dim=head_dim,
        vocab_size=vocab_size,
        tie_embeddings=tie_embeddings,
    )
