"""Cost-optimal head configurations: candidates, buildable shapes for a real N*, the search and its converses.

Step 3 of the recipe: for a target loss L* and an inference context T, each head configuration
H = (n_q, n_kv) needs N*(H) = a / (L* - E)^(1/b) non-embedding parameters; the shape that holds
N*(H) follows the paper's aspect ratios; the rounded, buildable shape is costed at T with
costlaw.costs and the configurations are ranked by Z, memory or FLOPs. The converses ask for the
lowest loss under an inference budget, and for the lowest loss a training budget buys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import brentq

from costlaw.arch import PAPER_HEAD_DIM, PAPER_LADDER, PAPER_VOCAB_SIZE, Architecture, param_counts
from costlaw.costs import (
    PAPER_TRAIN_CONTEXT, ObjectiveSpec, dtype_bytes, inference_flops, inference_memory, training_flops,
)
from costlaw.laws import ChinchillaLaw, Heads, LossLaw

D_MODEL_MULTIPLE = 64  # rounding granularity of d: every paper shape is a multiple, and it equals the paper's d_h
LLAMA3_KV_HEADS = 8
RANK_BY = ("z", "memory", "flops")
_SCAN_STEPS_PER_OCTAVE = 128  # finer than every rounding step of d or L above about 1e7 parameters
_FINE_STEPS = 953  # targets 1e-4 apart (in log) within 10% of the coarse scan's best


def candidate_heads(n_max: int = 32) -> list[Heads]:
    """Step 1: (n_q, n_kv) with both powers of two up to n_max and n_kv <= n_q, sorted."""
    if isinstance(n_max, bool) or not isinstance(n_max, numbers.Integral) or n_max < 1:
        raise ValueError(f"n_max={n_max!r} is not allowed; it must be a positive integer")
    powers = [2**k for k in range(int(n_max).bit_length()) if 2**k <= n_max]
    return [(n_q, n_kv) for n_q in powers for n_kv in powers if n_kv <= n_q]


def continuous_non_embedding(heads: Heads, layers: float, d_model: float, *, head_dim: int = PAPER_HEAD_DIM,
                             ffn_matrices: int = 3) -> float:
    """arch.param_counts(...).non_embedding for real L and d, with the unrounded SwiGLU width d_ff = 8d/3."""
    n_q, n_kv = heads
    per_layer = d_model * head_dim * (2 * n_q + 2 * n_kv) + ffn_matrices * d_model * (8.0 * d_model / 3.0)
    return layers * per_layer + (2 * layers + 1) * d_model


@functools.lru_cache(maxsize=None)
def _ladder_nodes(heads: Heads, head_dim: int, ffn_matrices: int) -> tuple[np.ndarray, np.ndarray]:
    """(log N, d/L) of the paper's shapes with these heads, sorted by N.

    N is the continuous count, so solving for a ladder shape's own N gives back exactly its L and d.
    """
    nodes = sorted(
        (math.log(continuous_non_embedding(heads, s.num_layers, s.d_model, head_dim=head_dim,
                                           ffn_matrices=ffn_matrices)), s.d_model / s.num_layers)
        for s in PAPER_LADDER.values()
    )
    return np.array([n for n, _ in nodes]), np.array([r for _, r in nodes])


def aspect_ratio(heads: Heads, n: float, *, head_dim: int = PAPER_HEAD_DIM, ffn_matrices: int = 3) -> float:
    """d/L at non-embedding size n: linear in log N between the paper's shapes, flat beyond the smallest and largest.

    Flat, not linearly extrapolated: the ladder's last ratios swing between 43 and 102, and a line
    through the end pair would run to absurd shapes within a decade.
    """
    log_n, ratio = _ladder_nodes(heads, head_dim, ffn_matrices)
    return float(np.interp(math.log(n), log_n, ratio))


def _real_layers(heads: Heads, n: float, ratio: float, head_dim: int, ffn_matrices: int) -> float:
    # With d = r*L, N(L) = (8 m r^2 / 3) L^3 + r (d_h (2 n_q + 2 n_kv) + 2) L^2 + r L.
    n_q, n_kv = heads
    a = ffn_matrices * 8.0 * ratio**2 / 3.0
    b = ratio * (head_dim * (2 * n_q + 2 * n_kv) + 2)
    # Every coefficient is positive, so the cubic rises from 0 and the root is unique; N <= a L^3 bounds it.
    return brentq(lambda x: ((a * x + b) * x + ratio) * x - n, 0.0, (n / a) ** (1 / 3), xtol=1e-300, rtol=1e-15)


def _real_width(heads: Heads, layers: int, n: float, head_dim: int, ffn_matrices: int) -> float:
    # At fixed L, N(d) = (8 m L / 3) d^2 + (L d_h (2 n_q + 2 n_kv) + 2 L + 1) d: a quadratic.
    n_q, n_kv = heads
    a = ffn_matrices * 8.0 * layers / 3.0
    b = layers * head_dim * (2 * n_q + 2 * n_kv) + 2 * layers + 1
    return 2 * n / (b + math.sqrt(b * b + 4 * a * n))


@functools.lru_cache(maxsize=65536)
def _build(layers: int, d_model: int, heads: Heads, head_dim: int, vocab_size: int, tie_embeddings: bool,
           ffn_matrices: int) -> tuple[Architecture, int]:
    # Searches revisit the same few hundred lattice shapes thousands of times; building one is the slow part.
    arch = Architecture(layers, d_model, heads[0], heads[1], head_dim, vocab_size,
                        tie_embeddings=tie_embeddings, ffn_matrices=ffn_matrices)
    return arch, param_counts(arch).non_embedding


@dataclass(frozen=True)
class Shape:
    """A real-valued shape that holds exactly n_target non-embedding parameters, and its buildable rounding.

    real_layers and real_d_model follow the interpolated aspect ratio; arch has whole layers, d a
    multiple of d_multiple, the same heads, and n_actual non-embedding parameters.
    """

    arch: Architecture
    n_target: float
    n_actual: int
    real_layers: float
    real_d_model: float


def solve_shape(heads: Heads, n_target: float, *, head_dim: int = PAPER_HEAD_DIM, vocab_size: int = PAPER_VOCAB_SIZE,
                tie_embeddings: bool = True, ffn_matrices: int = 3, d_multiple: int = D_MODEL_MULTIPLE) -> Shape:
    """The shape with n_target non-embedding parameters for these heads, real-valued and rounded.

    Real: d/L = aspect_ratio(n_target), then L solves N(L, d/L * L) = n_target (N grows with L).
    Rounded: L is floor or ceil of the real L (at least 1); for each, d is the multiple of
    d_multiple just below or above the width that restores n_target at that L. Of those four, the
    one whose exact parameter count is nearest n_target in ratio is built.
    """
    if not 0 < n_target < math.inf:
        raise ValueError(f"n_target={n_target!r} is not allowed; it must be a positive, finite parameter count")
    if isinstance(d_multiple, bool) or not isinstance(d_multiple, numbers.Integral) or d_multiple < 1:
        raise ValueError(f"d_multiple={d_multiple!r} is not allowed; it must be a positive integer")
    heads = (int(heads[0]), int(heads[1]))
    ratio = aspect_ratio(heads, n_target, head_dim=head_dim, ffn_matrices=ffn_matrices)
    real_layers = _real_layers(heads, n_target, ratio, head_dim, ffn_matrices)
    best = None
    for layers in sorted({max(1, math.floor(real_layers)), max(1, math.ceil(real_layers))}):
        width = _real_width(heads, layers, n_target, head_dim, ffn_matrices) / d_multiple
        for d_model in sorted({max(1, math.floor(width)) * d_multiple, max(1, math.ceil(width)) * d_multiple}):
            arch, n_actual = _build(layers, d_model, heads, head_dim, vocab_size, tie_embeddings, ffn_matrices)
            key = (abs(math.log(n_actual / n_target)), abs(math.log(d_model / layers / ratio)))
            if best is None or key < best[0]:
                best = (key, arch, n_actual)
    return Shape(arch=best[1], n_target=float(n_target), n_actual=best[2], real_layers=real_layers,
                 real_d_model=ratio * real_layers)


@dataclass(frozen=True)
class Costing:
    """How shapes are built and costed: head size, vocabulary, dtypes and the d rounding."""

    head_dim: int = PAPER_HEAD_DIM
    vocab_size: int = PAPER_VOCAB_SIZE
    tie_embeddings: bool = True
    ffn_matrices: int = 3
    d_multiple: int = D_MODEL_MULTIPLE
    param_dtype: str = "bfloat16"
    kv_dtype: str = "bfloat16"

    def shape(self, heads: Heads, n_target: float) -> Shape:
        return solve_shape(heads, n_target, head_dim=self.head_dim, vocab_size=self.vocab_size,
                           tie_embeddings=self.tie_embeddings, ffn_matrices=self.ffn_matrices,
                           d_multiple=self.d_multiple)


@dataclass(frozen=True)
class Candidate:
    """One head configuration at one size, costed per generated token at `context`.

    loss is the law's prediction for the built shape (n_actual), which rounding moves slightly off
    the target. intervals (present when bootstrap laws were given) maps "n_star", "flops",
    "memory_bytes" and "z" to (low, high) percentile bounds; inf marks samples that cannot reach L*.
    """

    heads: Heads
    n_star: float
    shape: Shape
    loss: float
    context: float
    flops: float
    memory_values: float
    memory_bytes: float
    z: float
    intervals: Mapping[str, tuple[float, float]] | None = None

    def memory(self, objective: ObjectiveSpec) -> float:
        return objective.memory_in_unit(self.memory_values, self.memory_bytes)


@dataclass(frozen=True)
class Skipped:
    """A head configuration left out of a ranking, and why."""

    heads: Heads
    reason: str


def _cost(heads: Heads, law: LossLaw, n_star: float, shape: Shape, context: float, objective: ObjectiveSpec,
          costing: Costing) -> Candidate:
    flops = inference_flops(shape.arch, context).total
    memory = inference_memory(shape.arch, context, param_dtype=costing.param_dtype, kv_dtype=costing.kv_dtype)
    return Candidate(
        heads=heads, n_star=n_star, shape=shape, loss=law.loss(shape.n_actual), context=context, flops=flops,
        memory_values=memory.total_values, memory_bytes=memory.total_bytes,
        z=objective.z(memory.total_values, memory.total_bytes, flops),
    )


def _rank_key(rank_by: str, objective: ObjectiveSpec) -> Callable[[Candidate], tuple]:
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by={rank_by!r} is not allowed; allowed: {', '.join(RANK_BY)}")
    value = {"z": lambda c: c.z, "memory": lambda c: c.memory(objective), "flops": lambda c: c.flops}[rank_by]
    return lambda c: (value(c), c.heads)


def _check_laws(laws: Mapping[Heads, LossLaw]) -> None:
    if not laws:
        raise ValueError("no loss laws given; fit some first (costlaw fit) or pass a dict of (n_q, n_kv) -> LossLaw")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive, finite number")


def unreachable_message(laws: Mapping[Heads, LossLaw], target_loss: float) -> str:
    """Why no law reaches target_loss, naming the smallest reachable loss and where it comes from."""
    heads, law = min(laws.items(), key=lambda item: (item[1].E, item[0]))
    return (f"target loss {target_loss:g} is unreachable for every head configuration (each law needs L* > E); "
            f"the smallest reachable loss is just above {law.E:.4g} (E of H={heads}); choose a larger target loss")


def _quantiles(values: Sequence[float], confidence: float) -> tuple[float, float]:
    # inverted_cdf picks sample values, so an unreachable (inf) sample stays inf instead of making nan.
    low, high = np.quantile(np.asarray(values, dtype=float), [(1 - confidence) / 2, (1 + confidence) / 2],
                            method="inverted_cdf")
    return float(low), float(high)


# Beyond this a "model" is not a design question (the largest trained today are ~1e12); laws with tiny
# exponents can ask for 1e50 parameters, which the shape solver cannot represent.
MAX_BUILDABLE_N = 1e15


def _n_star(law: LossLaw, target_loss: float) -> tuple[float, str | None]:
    """N* for the target, and why it cannot be built (None when it can)."""
    n_star = law.n_for_loss(target_loss)
    if target_loss <= law.E:
        return n_star, f"target {target_loss:g} is not above E={law.E:.4g}"
    if not n_star <= MAX_BUILDABLE_N:
        return math.inf, f"target {target_loss:g} needs N* > {MAX_BUILDABLE_N:.0e} parameters (b={law.b:.3g})"
    return n_star, None


def _intervals(heads: Heads, samples: Sequence[LossLaw], target_loss: float, context: float,
               objective: ObjectiveSpec, costing: Costing, confidence: float) -> dict[str, tuple[float, float]]:
    columns: dict[str, list[float]] = {"n_star": [], "flops": [], "memory_bytes": [], "z": []}
    for law in samples:
        n_star, unreachable = _n_star(law, target_loss)
        if unreachable:
            for column in columns.values():
                column.append(math.inf)
            continue
        candidate = _cost(heads, law, n_star, costing.shape(heads, n_star), context, objective, costing)
        for name, column in columns.items():
            column.append(getattr(candidate, name))
    return {name: _quantiles(column, confidence) for name, column in columns.items()}


@dataclass(frozen=True)
class Recommendation:
    """Step 3's answer for one (L*, T): every reachable configuration ranked, best first, and the baseline.

    baseline is the candidate the savings compare against (None when it cannot reach L*);
    baseline_note says which rule chose it, or why there is none.
    """

    target_loss: float
    context: float
    rank_by: str
    objective: ObjectiveSpec
    costing: Costing
    ranked: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...]
    baseline: Candidate | None
    baseline_note: str

    @property
    def winner(self) -> Candidate:
        return self.ranked[0]

    @property
    def runner_up(self) -> Candidate | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    def saving(self, what: str) -> float | None:
        """1 - winner/baseline for "memory" (bytes), "flops" or "z"; None without a baseline."""
        if self.baseline is None:
            return None
        attr = {"memory": "memory_bytes", "flops": "flops", "z": "z"}[what]
        return 1 - getattr(self.winner, attr) / getattr(self.baseline, attr)


def _closest_to_width(candidates: Sequence[Candidate], head_dim: int) -> Candidate | None:
    """The candidate whose n_q is nearest (in log2) d/d_h of its own shape; ties go to more query heads."""
    if not candidates:
        return None
    return min(candidates, key=lambda c: (abs(math.log2(c.heads[0] * head_dim / c.shape.arch.d_model)),
                                          -c.heads[0]))


def _baseline(candidates: Mapping[Heads, Candidate], laws: Mapping[Heads, LossLaw], baseline: Heads | None,
              head_dim: int) -> tuple[Candidate | None, str]:
    if baseline is not None:
        if baseline not in laws:
            raise ValueError(f"baseline {baseline} has no loss law; choose one of "
                             f"{', '.join(f'{q},{k}' for q, k in sorted(laws))}")
        if baseline not in candidates:
            return None, f"the chosen baseline {baseline} cannot reach the target loss (E={laws[baseline].E:.4g})"
        return candidates[baseline], "as chosen"
    llama = _closest_to_width([c for h, c in candidates.items() if h[1] == LLAMA3_KV_HEADS], head_dim)
    if llama is not None:
        return llama, f"Llama-3-like: {LLAMA3_KV_HEADS} KV heads, n_q nearest d/d_h of its own shape"
    mha = _closest_to_width([c for h, c in candidates.items() if h[0] == h[1]], head_dim)
    missing = f"no law with {LLAMA3_KV_HEADS} KV heads reaches the target"
    if mha is not None:
        return mha, f"MHA-like, n_q = n_kv nearest d/d_h, because {missing}"
    return None, f"{missing}, nor any MHA-like law (n_q = n_kv); pass baseline=(n_q, n_kv) to compare"


def recommend(laws: Mapping[Heads, LossLaw], target_loss: float, context: float, *,
              objective: ObjectiveSpec = ObjectiveSpec(), rank_by: str = "z", baseline: Heads | None = None,
              costing: Costing = Costing(), samples: Mapping[Heads, Sequence[LossLaw]] | None = None,
              confidence: float = 0.95) -> Recommendation:
    """Rank every head configuration by the cost of reaching target_loss, served at `context`.

    Each H gets N*(H) = law.n_for_loss(target_loss), the buildable shape of solve_shape, and its
    per-token inference FLOPs, memory (values and bytes) and Z at `context`; H that cannot reach
    the target (target <= E) are skipped with the reason. Ranking by "memory" uses the objective's
    memory unit, so lam=1 ranks as "memory" and lam=0 as "flops".

    Baseline (savings are 1 - winner/baseline): the Llama-3 head configuration is (d/d_h, 8) for a
    model of width d, and d itself depends on which law is used. We resolve the circularity over the
    laws with 8 KV heads: each (n_q, 8) gets its own N* and shape, and the baseline is the one whose
    n_q is nearest d/d_h of that shape (in log2; ties to the larger n_q). Without a reachable
    8-KV-head law, the MHA-like configuration (n_q = n_kv) chosen the same way stands in, and the
    note says so. `baseline=(n_q, n_kv)` overrides the rule.

    samples: bootstrap refits per H; with them every candidate carries `confidence` percentile
    intervals on N*, FLOPs, memory bytes and Z.
    """
    _check_laws(laws)
    _check_positive("target_loss", target_loss)
    _check_positive("context", context)
    key = _rank_key(rank_by, objective)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; it must lie strictly between 0 and 1")
    candidates, skipped = {}, []
    for heads, law in sorted(laws.items()):
        n_star, unreachable = _n_star(law, target_loss)
        if unreachable:
            skipped.append(Skipped(heads, unreachable))
            continue
        candidate = _cost(heads, law, n_star, costing.shape(heads, n_star), context, objective, costing)
        if samples and samples.get(heads):
            intervals = _intervals(heads, samples[heads], target_loss, context, objective, costing, confidence)
            candidate = dataclasses.replace(candidate, intervals=intervals)
        candidates[heads] = candidate
    if not candidates:
        raise ValueError(unreachable_message(laws, target_loss))
    chosen, note = _baseline(candidates, laws, baseline, costing.head_dim)
    return Recommendation(
        target_loss=float(target_loss), context=context, rank_by=rank_by, objective=objective, costing=costing,
        ranked=tuple(sorted(candidates.values(), key=key)), skipped=tuple(skipped), baseline=chosen,
        baseline_note=note,
    )


def _fitting_shapes(heads: Heads, fits: Callable[[Shape], bool], grid: np.ndarray, costing: Costing) -> list[Shape]:
    """Shapes of the grid targets that fit, plus, after every fitting target whose successor does not, the
    last fitting shape before the boundary (bisected to 1e-9)."""
    shapes = [costing.shape(heads, float(n)) for n in grid]
    fitting = [fits(shape) for shape in shapes]
    found = [shape for shape, ok in zip(shapes, fitting) if ok]
    for k in range(len(grid) - 1):
        if fitting[k] and not fitting[k + 1]:
            lo, hi = float(grid[k]), float(grid[k + 1])
            while hi / lo - 1 > 1e-9:
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if fits(costing.shape(heads, mid)) else (lo, mid)
            found.append(costing.shape(heads, lo))
    return found


def largest_shape(heads: Heads, fits: Callable[[Shape], bool], n_upper: float,
                  costing: Costing = Costing()) -> Shape | None:
    """The shape along solve_shape's path with the most parameters among those with fits(shape); None if none fits.

    n_upper must bound the targets that can fit (a cost lower bound gives one). Neither the cost
    nor the rounded N grows strictly with the target: where the interpolated aspect ratio climbs
    (e.g. from the 1.2B shape, 36 x 1536, to the 1.8B, 36 x 2048) the layer count dips, and with it
    the KV cache and attention FLOPs at long context; and near a whole number of layers nearest
    rounding alternates between L and L+1, so fitting shapes come in fragments. The whole path is
    scanned on a geometric grid (2^(1/_SCAN_STEPS_PER_OCTAVE) apart), then 10% either side of the
    best fitting shape again 1e-4 apart, bisecting every boundary from fitting to not fitting; the
    largest fitting shape found wins. Fragments narrower than the fine step can be missed.
    """
    n_lo = costing.shape(heads, 1.0).n_target  # targets this small all build one layer of width d_multiple
    if not n_upper > n_lo:
        return None
    step = 2.0 ** (1 / _SCAN_STEPS_PER_OCTAVE)
    coarse = n_lo * step ** np.arange(math.ceil(math.log(n_upper / n_lo, step)) + 1)
    found = _fitting_shapes(heads, fits, coarse, costing)
    if not found:
        return None
    best = max(found, key=lambda shape: shape.n_actual)
    fine = best.n_target * np.exp(np.arange(-_FINE_STEPS, _FINE_STEPS + 1) * math.log(1.1) / _FINE_STEPS)
    found += _fitting_shapes(heads, fits, fine, costing)
    return max(found, key=lambda shape: (shape.n_actual, -shape.n_target))


@dataclass(frozen=True)
class BudgetResult:
    """The lowest loss each head configuration reaches within an inference budget, best (lowest loss) first."""

    context: float
    flops_budget: float | None
    memory_budget: float | None
    ranked: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...]


def best_under_budget(laws: Mapping[Heads, LossLaw], context: float, *, flops_budget: float | None = None,
                      memory_budget: float | None = None, objective: ObjectiveSpec = ObjectiveSpec(),
                      costing: Costing = Costing()) -> BudgetResult:
    """The converse of recommend: for each H, the largest buildable model whose cost at `context` fits.

    flops_budget is inference FLOPs per generated token; memory_budget is bytes (weights in
    param_dtype plus one sequence's KV cache in kv_dtype). With both, both must hold. Each
    candidate's n_star is the target N its shape was solved for; ranking is by predicted loss.
    """
    _check_laws(laws)
    _check_positive("context", context)
    if flops_budget is None and memory_budget is None:
        raise ValueError("give flops_budget (FLOPs per token) or memory_budget (bytes), or both")
    for name, value in (("flops_budget", flops_budget), ("memory_budget", memory_budget)):
        if value is not None:
            _check_positive(name, value)

    def fits(shape: Shape) -> bool:
        if flops_budget is not None and inference_flops(shape.arch, context).total > flops_budget:
            return False
        memory = inference_memory(shape.arch, context, param_dtype=costing.param_dtype, kv_dtype=costing.kv_dtype)
        return memory_budget is None or memory.total_bytes <= memory_budget

    # Weights alone cost 2 N_matmul > 2 N FLOPs and N_total > N values; rounding can undercut a target by < 2x.
    bounds = [b for b in (flops_budget and flops_budget / 2,
                          memory_budget and memory_budget / dtype_bytes(costing.param_dtype)) if b]
    n_upper = 2 * min(bounds)
    ranked, skipped = [], []
    for heads, law in sorted(laws.items()):
        shape = largest_shape(heads, fits, n_upper, costing)
        if shape is None:
            skipped.append(Skipped(heads, "even a one-layer model of width "
                                          f"{costing.d_multiple} exceeds the budget"))
            continue
        ranked.append(_cost(heads, law, shape.n_target, shape, context, objective, costing))
    return BudgetResult(context=context, flops_budget=flops_budget, memory_budget=memory_budget,
                        ranked=tuple(sorted(ranked, key=lambda c: (c.loss, c.heads))), skipped=tuple(skipped))


@dataclass(frozen=True)
class Allocation:
    """What one head configuration reaches with a training budget: shape, tokens, FLOPs spent, predicted loss."""

    heads: Heads
    shape: Shape
    tokens: int
    train_flops: float
    loss: float


@dataclass(frozen=True)
class TrainAllocation:
    """Head configurations ranked by the loss a training budget buys, best first."""

    train_flops: float
    train_context: float
    tokens_per_param: float
    ranked: tuple[Allocation, ...]
    skipped: tuple[Skipped, ...]


def train_allocation(laws: Mapping[Heads, LossLaw], train_flops: float, *,
                     train_context: float = PAPER_TRAIN_CONTEXT, tokens_per_param: float | ChinchillaLaw = 20.0,
                     causal: bool = True, costing: Costing = Costing()) -> TrainAllocation:
    """The training-side question: which N, D and H reach the lowest loss for train_flops FLOPs.

    Assumption: each per-H law was fitted on runs at one fixed ratio D/N (the paper: about 20
    tokens per non-embedding parameter), so it only predicts models trained at that ratio. For each
    H the largest shape along solve_shape's path with training_flops(arch, train_context,
    D = ratio * N) <= train_flops is trained, N non-embedding. A ChinchillaLaw instead supplies the
    ratio D/N of its compute-optimal allocation at train_flops (C = 6ND), held for every H.
    """
    _check_laws(laws)
    _check_positive("train_flops", train_flops)
    if isinstance(tokens_per_param, ChinchillaLaw):
        n_opt, d_opt = tokens_per_param.compute_optimal(train_flops)
        ratio = d_opt / n_opt
    else:
        _check_positive("tokens_per_param", tokens_per_param)
        ratio = float(tokens_per_param)

    def tokens(shape: Shape) -> int:
        return max(1, round(ratio * shape.n_actual))

    def spent(shape: Shape) -> float:
        return training_flops(shape.arch, train_context, tokens(shape), causal=causal).total

    n_upper = 2 * math.sqrt(train_flops / (6 * ratio))  # C >= 6 N_matmul D > 6 ratio N^2
    ranked, skipped = [], []
    for heads, law in sorted(laws.items()):
        shape = largest_shape(heads, lambda s: spent(s) <= train_flops, n_upper, costing)
        if shape is None:
            skipped.append(Skipped(heads, "the budget cannot train even the smallest model"))
            continue
        ranked.append(Allocation(heads=heads, shape=shape, tokens=tokens(shape), train_flops=spent(shape),
                                 loss=law.loss(shape.n_actual)))
    return TrainAllocation(train_flops=train_flops, train_context=train_context, tokens_per_param=ratio,
                           ranked=tuple(sorted(ranked, key=lambda a: (a.loss, a.heads))), skipped=tuple(skipped))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def candidate_to_json(candidate: Candidate, objective: ObjectiveSpec) -> dict:
    """A candidate as plain JSON; unbounded interval ends (samples that cannot reach L*) become null."""
    shape, arch = candidate.shape, candidate.shape.arch
    row = {
        "n_q": candidate.heads[0], "n_kv": candidate.heads[1], "n_star": candidate.n_star,
        "shape": {"num_layers": arch.num_layers, "d_model": arch.d_model, "d_ff": arch.d_ff,
                  "n_actual": shape.n_actual, "real_layers": shape.real_layers, "real_d_model": shape.real_d_model},
        "loss": candidate.loss, "context": candidate.context, "flops": candidate.flops,
        "memory_values": candidate.memory_values, "memory_bytes": candidate.memory_bytes,
        "memory": candidate.memory(objective), "z": candidate.z,
    }
    if candidate.intervals is not None:
        row["intervals"] = {name: [_finite(low), _finite(high)] for name, (low, high) in candidate.intervals.items()}
    return row


def objective_to_json(objective: ObjectiveSpec) -> dict:
    """The objective's weights, exponents and units as plain JSON."""
    return {"lam": objective.lam, "alpha": objective.alpha, "beta": objective.beta,
            "memory_unit": objective.memory_unit, "flops_unit": objective.flops_unit,
            "memory_dtype": objective.memory_dtype}


def recommendation_to_json(rec: Recommendation) -> dict:
    """A Recommendation as plain JSON: the ranking, the skipped heads, the baseline and the savings."""
    return {
        "target_loss": rec.target_loss, "context": rec.context, "rank_by": rec.rank_by,
        "objective": objective_to_json(rec.objective),
        "costing": dataclasses.asdict(rec.costing),
        "winner": list(rec.winner.heads),
        "runner_up": None if rec.runner_up is None else list(rec.runner_up.heads),
        "baseline": None if rec.baseline is None else list(rec.baseline.heads),
        "baseline_note": rec.baseline_note,
        "saving": {what: rec.saving(what) for what in ("memory", "flops", "z")},
        "ranked": [candidate_to_json(c, rec.objective) for c in rec.ranked],
        "skipped": [{"n_q": s.heads[0], "n_kv": s.heads[1], "reason": s.reason} for s in rec.skipped],
    }
