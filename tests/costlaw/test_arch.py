"""Tests for costlaw.arch: the d_ff rule, exact parameter counts, and the paper's ladder."""

import math

import pytest

from costlaw.arch import (
    PAPER_LADDER,
    Architecture,
    default_d_ff,
    ladder_shape,
    paper_architecture,
    param_counts,
)


@pytest.mark.parametrize(
    "d_model, expected",
    [(256, 672), (512, 1376), (768, 2048), (1024, 2720), (1280, 3424), (1536, 4096), (2048, 5472)],
)
def test_default_d_ff_rounds_to_nearest_multiple_of_32(d_model, expected):
    assert default_d_ff(d_model) == expected


def test_default_d_ff_rounds_halves_up_and_never_returns_zero():
    assert default_d_ff(18) == 64  # 8*18/3 = 48, exactly halfway between 32 and 64
    assert default_d_ff(3) == 32  # 8 would round to 0
    assert default_d_ff(768, multiple=64) == 2048
    assert default_d_ff(1024, multiple=256) == 2816  # 2730.7 -> nearest multiple of 256


def hand_expansion(L, d, n_q, n_kv, d_h, V, d_ff, tied):
    """Parameter shapes of the Flax model, as listed in its parameter tree."""
    layer = {
        "attn_norm": (d,),
        "wq": (d, n_q, d_h),
        "wk": (d, n_kv, d_h),
        "wv": (d, n_kv, d_h),
        "wo": (n_q, d_h, d),
        "mlp_norm": (d,),
        "w_gate": (d, d_ff),
        "w_up": (d, d_ff),
        "w_down": (d_ff, d),
    }
    top = {"embedding": (V, d), "final_norm": (d,)}
    if not tied:
        top["lm_head"] = (d, V)
    total = L * sum(math.prod(s) for s in layer.values()) + sum(math.prod(s) for s in top.values())
    embedding = V * d if tied else 2 * V * d
    layer_matrices = L * sum(math.prod(s) for s in layer.values() if len(s) > 1)
    return {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "matmul": layer_matrices + V * d,
        "norms": (2 * L + 1) * d,
        "attention_per_layer": sum(math.prod(layer[k]) for k in ("wq", "wk", "wv", "wo")),
        "ffn_per_layer": sum(math.prod(layer[k]) for k in ("w_gate", "w_up", "w_down")),
    }


CONFIGS = [
    # (L, d, n_q, n_kv, d_h, V, d_ff or None, tied)
    pytest.param(4, 256, 4, 4, 64, 50304, None, True, id="mha-tied"),
    pytest.param(6, 512, 8, 2, 64, 1000, None, False, id="gqa-untied"),
    pytest.param(2, 128, 8, 1, 32, 777, None, True, id="mqa-tied"),
    pytest.param(3, 96, 6, 3, 32, 500, 200, False, id="dh-decoupled-explicit-dff"),
    pytest.param(36, 1536, 32, 8, 64, 50304, None, True, id="llama3-heads"),
]


@pytest.mark.parametrize("L, d, n_q, n_kv, d_h, V, d_ff, tied", CONFIGS)
def test_param_counts_match_the_models_parameter_tree(L, d, n_q, n_kv, d_h, V, d_ff, tied):
    arch = Architecture(L, d, n_q, n_kv, d_h, V, d_ff=d_ff, tie_embeddings=tied)
    resolved_d_ff = default_d_ff(d) if d_ff is None else d_ff
    assert arch.d_ff == resolved_d_ff
    expected = hand_expansion(L, d, n_q, n_kv, d_h, V, resolved_d_ff, tied)
    counts = param_counts(arch)
    assert {key: getattr(counts, key) for key in expected} == expected


def test_two_ffn_matrices_drop_one_d_by_d_ff_matrix_per_layer():
    three = Architecture(6, 512, 8, 2, 64, 1000)
    two = Architecture(6, 512, 8, 2, 64, 1000, ffn_matrices=2)
    assert param_counts(two).ffn_per_layer == 2 * 512 * 1376
    assert param_counts(three).total - param_counts(two).total == 6 * 512 * 1376
    assert param_counts(three).matmul - param_counts(two).matmul == 6 * 512 * 1376


def test_tying_changes_total_but_not_matmul_count():
    tied = param_counts(Architecture(2, 128, 4, 2, 32, 1000, tie_embeddings=True))
    untied = param_counts(Architecture(2, 128, 4, 2, 32, 1000, tie_embeddings=False))
    assert untied.total - tied.total == 1000 * 128
    assert untied.matmul == tied.matmul
    assert untied.non_embedding == tied.non_embedding


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"d_model": -8}, "d_model"),
        ({"head_dim": 1.5}, "head_dim"),
        ({"vocab_size": True}, "vocab_size"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"d_ff": 0}, "d_ff"),
        ({"ffn_matrices": 4}, "ffn_matrices"),
        ({"tie_embeddings": "yes"}, "tie_embeddings"),
    ],
)
def test_invalid_architectures_name_the_field(kwargs, field):
    base = dict(num_layers=2, d_model=128, num_q_heads=4, num_kv_heads=2, head_dim=32, vocab_size=100)
    with pytest.raises(ValueError, match=field):
        Architecture(**{**base, **kwargs})


def test_indivisible_heads_error_lists_the_allowed_kv_heads():
    with pytest.raises(ValueError, match="allowed num_kv_heads: 1, 2, 3, 4, 6, 12"):
        Architecture(2, 768, 12, 5, 64, 100)


@pytest.mark.parametrize("name", ["3M", "19M", "85M", "150M", "200M", "470M", "680M"])
def test_ladder_non_embedding_counts_are_close_to_their_labels(name):
    # 5%: the labels are rounded to two or three significant figures ("3M" counts
    # 3.12M, 3.8% above). "1.2B" is excluded on purpose: it counts 1.02B.
    label = {"3M": 3e6, "19M": 19e6, "85M": 85e6, "150M": 150e6, "200M": 200e6, "470M": 470e6, "680M": 680e6}
    counted = param_counts(paper_architecture(name)).non_embedding
    assert counted == pytest.approx(label[name], rel=0.05)


def test_ladder_exact_counts():
    # 85M: 12 layers of (4*768*768 attention + 3*768*2048 SwiGLU + 2*768 norms) + final norm.
    assert param_counts(paper_architecture("85M")).non_embedding == 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768) + 768
    assert param_counts(paper_architecture("1.2B")).non_embedding == 36 * (4 * 1536**2 + 3 * 1536 * 4096 + 2 * 1536) + 1536


def test_paper_architecture_defaults_to_mha_and_keeps_shape_for_gqa():
    mha = paper_architecture("150M")
    assert (mha.num_layers, mha.d_model, mha.num_q_heads, mha.num_kv_heads) == (12, 1024, 16, 16)
    assert (mha.head_dim, mha.vocab_size, mha.tie_embeddings) == (64, 50304, True)
    gqa = paper_architecture("150M", num_q_heads=16, num_kv_heads=4, tie_embeddings=False)
    assert (gqa.num_layers, gqa.d_model, gqa.num_kv_heads, gqa.tie_embeddings) == (12, 1024, 4, False)
    assert paper_architecture("13B", head_dim=128).num_q_heads == 32


def test_ladder_table_matches_the_paper():
    assert [(s.name, s.num_layers, s.d_model) for s in PAPER_LADDER.values()] == [
        ("3M", 4, 256), ("19M", 6, 512), ("85M", 12, 768), ("150M", 12, 1024), ("200M", 16, 1024),
        ("470M", 24, 1280), ("680M", 24, 1536), ("1.2B", 36, 1536), ("1.8B", 36, 2048), ("4B", 48, 2560),
        ("6B", 54, 3072), ("13B", 64, 4096), ("33B", 72, 6144), ("64B", 80, 8192),
    ]
    assert (ladder_shape("470M").max_lr, ladder_shape("470M").train_tokens) == (5e-4, 9_400_000_000)
    assert (ladder_shape("64B").max_lr, ladder_shape("64B").train_tokens) == (None, None)


def test_unknown_ladder_name_lists_allowed_names():
    with pytest.raises(ValueError, match=r"unknown ladder name '5M'; allowed: 3M, 19M, .*64B"):
        paper_architecture("5M")
