"""Tests for costlaw.search: candidates, the shape solver, recommendations, budgets and training allocation."""

import math

import numpy as np
import pytest

from costlaw.arch import PAPER_LADDER, Architecture, paper_architecture, param_counts
from costlaw.costs import ObjectiveSpec, inference_flops, inference_memory, training_flops
from costlaw.laws import ChinchillaLaw, LossLaw
from costlaw.search import (
    aspect_ratio, best_under_budget, candidate_heads, continuous_non_embedding, recommend, solve_shape,
    train_allocation,
)

HEADS = candidate_heads(32)


def graded_laws(rng, heads=HEADS, E=1.8):
    """Laws in which every halving of n_q or n_kv costs a little loss (a grows by a few %)."""
    per_q, per_kv, b = rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05), rng.uniform(0.25, 0.4)
    return {h: LossLaw(a=1e8 * (1 + per_q * math.log2(32 / h[0]) + per_kv * math.log2(32 / h[1])), b=b, E=E)
            for h in heads}


def test_candidates_are_the_21_power_of_two_pairs():
    heads = candidate_heads(32)
    assert len(heads) == 21 == len(set(heads))
    assert all(n_kv <= n_q and n_q & (n_q - 1) == 0 and n_kv & (n_kv - 1) == 0 for n_q, n_kv in heads)
    assert candidate_heads(48) == heads
    assert candidate_heads(1) == [(1, 1)]
    assert len(candidate_heads(4)) == 6
    with pytest.raises(ValueError, match="n_max"):
        candidate_heads(0)


def test_continuous_count_equals_param_counts_when_8d_over_3_is_whole():
    for d_model in (384, 768, 1536, 3072):  # 8d/3 is a multiple of 32, so d_ff is not rounded
        for heads in ((32, 8), (1, 1), (16, 2)):
            arch = Architecture(7, d_model, heads[0], heads[1], 64, 50304)
            assert continuous_non_embedding(heads, 7, d_model) == param_counts(arch).non_embedding


def test_real_solution_holds_exactly_n_target():
    rng = np.random.default_rng()
    for _ in range(50):
        heads = HEADS[rng.integers(len(HEADS))]
        n_target = 10 ** rng.uniform(5, 12)
        shape = solve_shape(heads, n_target)
        assert continuous_non_embedding(heads, shape.real_layers, shape.real_d_model) == pytest.approx(
            n_target, rel=1e-9)
        assert shape.real_d_model / shape.real_layers == pytest.approx(aspect_ratio(heads, n_target), rel=1e-12)


def test_rounded_shape_is_buildable_and_close():
    rng = np.random.default_rng()
    for _ in range(50):
        heads = HEADS[rng.integers(len(HEADS))]
        n_target = 10 ** rng.uniform(8, 11)
        shape = solve_shape(heads, n_target)
        arch = shape.arch
        assert (arch.num_q_heads, arch.num_kv_heads) == heads and arch.d_model % 64 == 0
        assert abs(arch.num_layers - shape.real_layers) < 1
        assert shape.n_actual == param_counts(arch).non_embedding
        # One step of d (64) moves N by ~2*64/d: up to 5% at 1e8 (d ~ 700), 2.5% beyond 1e9.
        assert abs(shape.n_actual / n_target - 1) < (0.05 if n_target < 1e9 else 0.025)
    assert solve_shape((4, 2), 3e8, d_multiple=128).arch.d_model % 128 == 0


def test_shapes_grow_with_n_target():
    heads = HEADS[np.random.default_rng().integers(len(HEADS))]
    shapes = [solve_shape(heads, n) for n in np.geomspace(1e7, 1e11, 400)]
    volume = [s.real_layers * s.real_d_model**2 for s in shapes]
    assert volume == sorted(volume) and len(set(volume)) == len(volume)
    # Nearest rounding may trade a layer for width and land a little below a smaller target's
    # shape, so the built N grows only over steps larger than the rounding error (< 5% above 1e8).
    built = [solve_shape(heads, n).n_actual for n in 1e8 * 1.15 ** np.arange(50)]
    assert built == sorted(built)


@pytest.mark.parametrize("name", list(PAPER_LADDER))
def test_ladder_point_returns_the_ladder_shape(name):
    for heads in ((1, 1), (8, 2), (32, 8), (32, 32)):
        arch = paper_architecture(name, *heads)
        assert solve_shape(heads, param_counts(arch).non_embedding).arch == arch
        exact = solve_shape(heads, continuous_non_embedding(heads, arch.num_layers, arch.d_model))
        assert exact.real_layers == pytest.approx(arch.num_layers, rel=1e-9)
        assert exact.real_d_model == pytest.approx(arch.d_model, rel=1e-9)


def test_aspect_ratio_is_flat_beyond_the_ladder():
    assert aspect_ratio((8, 8), 1e3) == 256 / 4  # the 3M shape
    assert aspect_ratio((8, 8), 1e14) == 8192 / 80  # the 64B shape


def _hand_costs(layers, d_model, d_ff, heads, context):
    """Inference FLOPs, bytes (bf16) and default Z at `context`, straight from the paper's cost model."""
    n_q, n_kv = heads
    layer_matrices = layers * (d_model * 64 * (2 * n_q + 2 * n_kv) + 3 * d_model * d_ff)
    n_matmul = layer_matrices + 50304 * d_model
    n_total = layer_matrices + (2 * layers + 1) * d_model + 50304 * d_model
    flops = 2 * n_matmul + 4 * context * layers * 64 * n_q
    memory = 2 * (n_total + 2 * context * layers * 64 * n_kv)
    return flops, memory, 0.9 * (memory / 1e9) ** 0.5 + 0.1 * (flops / 1e9) ** (1 / 3)


def test_hand_checked_recommendation():
    # Laws chosen so that N*(L* = 3) is exactly the 85M shape for (8, 8) and the 150M shape for (8, 1).
    target, b, E, T = 3.0, 0.3, 1.8, 65536
    n_mha = 12 * (768 * 64 * 32 + 3 * 768 * 2048) + 25 * 768  # d_ff = 8*768/3 = 2048 exactly
    n_gqa = 12 * (1024 * 64 * 18 + 3 * 1024 * 2720) + 25 * 1024  # d_ff = 2730.7 rounded to 2720
    laws = {(8, 8): LossLaw(n_mha * (target - E) ** (1 / b), b, E),
            (8, 1): LossLaw(n_gqa * (target - E) ** (1 / b), b, E)}
    rec = recommend(laws, target, T, baseline=(8, 8))
    flops_mha, memory_mha, z_mha = _hand_costs(12, 768, 2048, (8, 8), T)
    flops_gqa, memory_gqa, z_gqa = _hand_costs(12, 1024, 2720, (8, 1), T)
    by_heads = {c.heads: c for c in rec.ranked}
    for heads, n, flops, memory, z in (((8, 8), n_mha, flops_mha, memory_mha, z_mha),
                                      ((8, 1), n_gqa, flops_gqa, memory_gqa, z_gqa)):
        c = by_heads[heads]
        assert c.n_star == pytest.approx(n, rel=1e-12) and c.shape.n_actual == n
        assert c.loss == pytest.approx(target, rel=1e-12)
        assert (c.flops, c.memory_bytes) == (flops, memory)
        assert c.z == pytest.approx(z, rel=1e-12)
    assert z_gqa < z_mha and rec.winner.heads == (8, 1) and rec.runner_up.heads == (8, 8)
    assert rec.saving("memory") == pytest.approx(1 - memory_gqa / memory_mha, rel=1e-12)
    assert rec.saving("flops") == pytest.approx(1 - flops_gqa / flops_mha, rel=1e-12)


def test_longer_context_never_favours_more_kv_heads():
    rng = np.random.default_rng()
    laws = graded_laws(rng)
    contexts = [1024, 8192, 32768, 131072, 524288]
    shortest = []
    for target in rng.uniform(2.3, 3.3, size=3):
        for rank_by, objective in (("memory", ObjectiveSpec()), ("z", ObjectiveSpec()),
                                   ("z", ObjectiveSpec(lam=0.99))):
            kv = [recommend(laws, target, T, rank_by=rank_by, objective=objective).winner.heads[1]
                  for T in contexts]
            assert kv == sorted(kv, reverse=True), (target, rank_by, objective.lam, kv)
            assert kv[-1] == 1
            shortest.append(kv[0])
    assert max(shortest) > 1  # the short contexts did favour more KV heads somewhere: the check has teeth


def test_lam_one_ranks_by_memory_and_lam_zero_by_flops():
    rng = np.random.default_rng()
    laws = graded_laws(rng)
    target, T = rng.uniform(2.4, 3.2), float(rng.choice([4096, 65536, 262144]))
    for lam, cost in ((1.0, "memory"), (0.0, "flops")):
        rec = recommend(laws, target, T, objective=ObjectiveSpec(lam=lam))
        by_hand = {}
        for c in rec.ranked:  # costed again here from the shapes alone
            memory = inference_memory(c.shape.arch, T).total_bytes
            by_hand[c.heads] = memory if cost == "memory" else inference_flops(c.shape.arch, T).total
        assert [c.heads for c in rec.ranked] == sorted(by_hand, key=lambda h: (by_hand[h], h))
        assert [c.heads for c in recommend(laws, target, T, rank_by=cost).ranked] == [c.heads for c in rec.ranked]


def test_baseline_rules():
    rng = np.random.default_rng()
    laws = graded_laws(rng)
    rec = recommend(laws, 2.6, 131072)
    base = rec.baseline
    assert base.heads[1] == 8 and "Llama-3" in rec.baseline_note
    width = base.shape.arch.d_model / 64
    for c in rec.ranked:  # no other 8-KV-head law has n_q nearer its own d/d_h
        if c.heads[1] == 8:
            assert abs(math.log2(base.heads[0] / width)) <= abs(math.log2(c.heads[0] * 64 / c.shape.arch.d_model))
    no_eight = {h: law for h, law in laws.items() if h[1] != 8}
    rec = recommend(no_eight, 2.6, 131072)
    assert rec.baseline.heads[0] == rec.baseline.heads[1] and "MHA-like" in rec.baseline_note
    rec = recommend({(4, 1): laws[(4, 1)], (8, 2): laws[(8, 2)]}, 2.6, 131072)
    assert rec.baseline is None and rec.saving("memory") is None
    chosen = recommend(laws, 2.6, 131072, baseline=(16, 4))
    assert chosen.baseline.heads == (16, 4)
    assert chosen.saving("flops") == pytest.approx(1 - chosen.winner.flops / chosen.baseline.flops)
    with pytest.raises(ValueError, match="no loss law"):
        recommend(laws, 2.6, 131072, baseline=(64, 8))
    laws[(32, 8)] = LossLaw(1e8, 0.3, 2.7)
    rec = recommend(laws, 2.6, 131072, baseline=(32, 8))
    assert rec.baseline is None and "cannot reach" in rec.baseline_note


def test_unreachable_configurations_are_skipped_and_all_unreachable_is_an_error():
    laws = {(8, 8): LossLaw(1e8, 0.3, 1.8), (8, 1): LossLaw(1e8, 0.3, 2.5)}
    rec = recommend(laws, 2.2, 8192)
    assert [c.heads for c in rec.ranked] == [(8, 8)]
    assert rec.skipped[0].heads == (8, 1) and "E=2.5" in rec.skipped[0].reason
    with pytest.raises(ValueError, match=r"smallest reachable loss is just above 1.8 \(E of H=\(8, 8\)\)"):
        recommend(laws, 1.7, 8192)


def test_bootstrap_intervals():
    law = LossLaw(2e8, 0.3, 1.8)
    rec = recommend({(8, 2): law}, 2.7, 32768, samples={(8, 2): [law] * 5})
    c = rec.winner
    assert c.intervals == {"n_star": (c.n_star, c.n_star), "flops": (c.flops, c.flops),
                           "memory_bytes": (c.memory_bytes, c.memory_bytes), "z": (c.z, c.z)}
    rng = np.random.default_rng()
    samples = [LossLaw(law.a * rng.uniform(0.8, 1.25), law.b, law.E) for _ in range(40)]
    samples.append(LossLaw(law.a, law.b, 2.8))  # one resample that cannot reach L*
    c = recommend({(8, 2): law}, 2.7, 32768, samples={(8, 2): samples}, confidence=0.5).winner
    n_stars = sorted(s.n_for_loss(2.7) for s in samples)
    assert c.intervals["n_star"][0] == n_stars[10] and c.intervals["n_star"][1] == n_stars[30]
    c = recommend({(8, 2): law}, 2.7, 32768, samples={(8, 2): samples}, confidence=0.99).winner
    assert c.intervals["n_star"][1] == math.inf and c.intervals["z"][0] < c.z


def _larger_shapes_nearby(heads, shape):
    """Shapes along the path more than 0.5% larger than `shape`, from targets within 10% of it, 1e-4 apart.

    The search scans targets 0.5% apart, so a rounding-jitter window just above its answer may hide a
    fitting shape up to that much larger; one whole rounding step (1% or more) must not fit.
    """
    targets = shape.n_target * np.exp(np.arange(-1000, 1001) * 1e-4)
    return [s for s in (solve_shape(heads, n) for n in targets) if s.n_actual > shape.n_actual * 1.005]


def test_budget_picks_the_largest_shape_that_fits():
    rng = np.random.default_rng()
    laws = graded_laws(rng, heads=[(32, 8), (8, 1), (1, 1)])
    for _ in range(3):
        T = float(rng.choice([4096, 131072, 1e6]))
        for kind in ("flops", "memory"):
            budget = 10 ** rng.uniform(9, 11.5)
            result = best_under_budget(laws, T, **{f"{kind}_budget": budget})

            def cost(arch):
                return inference_flops(arch, T).total if kind == "flops" else inference_memory(arch, T).total_bytes

            assert [c.loss for c in result.ranked] == sorted(c.loss for c in result.ranked)
            for c in result.ranked:
                assert cost(c.shape.arch) <= budget
                assert all(cost(s.arch) > budget for s in _larger_shapes_nearby(c.heads, c.shape))
                assert c.loss == laws[c.heads].loss(c.shape.n_actual)
                for n in 10 ** rng.uniform(math.log10(c.shape.n_actual / 4), math.log10(budget), size=150):
                    other = solve_shape(c.heads, n)
                    assert cost(other.arch) > budget or other.n_actual <= c.shape.n_actual * 1.005


def test_budget_with_both_limits_and_too_small_budgets():
    laws = {(8, 8): LossLaw(1e8, 0.3, 1.8), (8, 1): LossLaw(1.1e8, 0.3, 1.8)}
    both = best_under_budget(laws, 131072, flops_budget=3e9, memory_budget=2e9)
    for c in both.ranked:
        assert c.flops <= 3e9 and c.memory_bytes <= 2e9
    tiny = best_under_budget(laws, 131072, memory_budget=1e6)
    assert tiny.ranked == () and {s.heads for s in tiny.skipped} == set(laws)
    with pytest.raises(ValueError, match="flops_budget"):
        best_under_budget(laws, 131072)


def test_training_allocation_spends_the_budget():
    rng = np.random.default_rng()
    laws = graded_laws(rng, heads=[(32, 32), (32, 8), (4, 1)])
    budget = 10 ** rng.uniform(18, 21)
    result = train_allocation(laws, budget)
    assert [a.loss for a in result.ranked] == sorted(a.loss for a in result.ranked)
    for a in result.ranked:
        assert a.tokens == round(20 * a.shape.n_actual)
        assert a.train_flops == training_flops(a.shape.arch, 8192, a.tokens).total <= budget
        for larger in _larger_shapes_nearby(a.heads, a.shape):
            assert training_flops(larger.arch, 8192, round(20 * larger.n_actual)).total > budget
        assert a.loss == laws[a.heads].loss(a.shape.n_actual)
    chinchilla = ChinchillaLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
    n_opt, d_opt = chinchilla.compute_optimal(budget)
    result = train_allocation(laws, budget, tokens_per_param=chinchilla)
    assert result.tokens_per_param == pytest.approx(d_opt / n_opt)
    for a in result.ranked:
        assert a.tokens == round(d_opt / n_opt * a.shape.n_actual)


def test_degenerate_laws_are_skipped_not_crashed():
    """A tiny fitted exponent asks for an astronomically large N*: skipped with the reason."""
    from costlaw.laws import LossLaw
    from costlaw.search import recommend

    laws = {(8, 8): LossLaw(a=1e8, b=0.3, E=2.0), (8, 1): LossLaw(a=1e8, b=1e-3, E=2.0), (4, 1): LossLaw(a=1e8, b=0.004, E=2.0)}
    rec = recommend(laws, 2.3, 8192)
    assert [c.heads for c in rec.ranked] == [(8, 8)]
    reasons = {s.heads: s.reason for s in rec.skipped}
    assert set(reasons) == {(8, 1), (4, 1)} and all("needs N* >" in r for r in reasons.values())
