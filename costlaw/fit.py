"""Fit L(N) = (a/N)^b + E per head configuration: Huber on log-loss, bootstrap intervals, held-out checks, a joint model over heads.

Method (Chinchilla approach 3; Hoffmann et al. 2022, Besiroglu et al. 2024): minimise the sum of
Huber losses (delta 1e-3) between predicted and observed log-loss with L-BFGS-B and an analytic
gradient, from the best points of a grid of initialisations. Internally a law is parameterised as
log L = logsumexp(c - b*log(N/N_ref), e): c is the log reducible loss at a reference size N_ref (the
geometric mean of the data) and e = log E. Unlike (log a, b), (c, b) are nearly uncorrelated, which
keeps the optimisation well conditioned; log a = log N_ref + c/b recovers the published form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

from costlaw.laws import Heads, LossLaw
from costlaw.records import Record

HUBER_DELTA = 1e-3
LAW_PARAMS = ("a", "b", "E")
# b = exp(log b) is kept within [1e-3, 7.4]: wider than any plausible scaling exponent, and it stops
# degenerate bootstrap resamples (e.g. a single distinct N) from overflowing.
_LOG_B_BOUNDS = (math.log(1e-3), 2.0)
_E_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.85, 0.95)  # initial E as a fraction of the smallest loss
_B_GRID = (0.05, 0.1, 0.2, 0.4, 0.8)
_C_OFFSETS = (-1.0, 0.0, 1.0)  # around the log reducible loss that E implies at N_ref
_STARTS = 3  # L-BFGS runs from the best grid points; the grid is cheap to evaluate, a run is not
_LBFGS_OPTIONS = {"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-9}


# L-BFGS-B calls BLAS on matrices of a few dozen numbers. OpenBLAS's worker threads then cost more
# than the arithmetic, and on a machine whose cores are busy they spin waiting for a time slice:
# the 1,000-record benchmark took 217 s with them and 7 s without. Fits run under this limit.
_THREADPOOLS = ThreadpoolController()  # after scipy's import, so it sees scipy's OpenBLAS too


def one_blas_thread():
    """A context manager and decorator limiting BLAS to one thread while the block or call runs."""
    return _THREADPOOLS.wrap(limits=1, user_api="blas")


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r divided by delta, and its derivative.

    Dividing by delta leaves the minimiser unchanged and makes the objective about the mean
    absolute log residual, so L-BFGS's default-scale tolerances mean something.
    """
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta)
    return value, np.where(small, r / delta, np.sign(r))


@dataclass(frozen=True)
class _Problem:
    """Points and the linear map from parameters to per-point (c, log b, e).

    theta = (gamma, eta, eps): c = F @ gamma, log b = F @ eta, e = G @ eps.
    """

    z: np.ndarray  # log(N / N_ref) per point
    y: np.ndarray  # log loss per point
    F: np.ndarray  # (points, k) features of c and log b
    G: np.ndarray  # (points, m) indicator of the E each point uses
    delta: float

    @property
    def size(self) -> int:
        return 2 * self.F.shape[1] + self.G.shape[1]

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.F.shape[1]
        return theta[:k], theta[k : 2 * k], theta[2 * k :]

    def log_pred(self, theta: np.ndarray) -> np.ndarray:
        gamma, eta, eps = self.split(theta)
        return np.logaddexp(_dot(self.F, gamma) - np.exp(_dot(self.F, eta)) * self.z, _dot(self.G, eps))

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        gamma, eta, eps = self.split(theta)
        b = np.exp(_dot(self.F, eta))
        u, e = _dot(self.F, gamma) - b * self.z, _dot(self.G, eps)
        log_pred = np.logaddexp(u, e)
        value, slope = huber(log_pred - self.y, self.delta)
        share = slope * np.exp(u - log_pred)  # d(log pred)/du = softmax weight of the power-law term
        grad = np.concatenate([_tdot(self.F, share), _tdot(self.F, -share * b * self.z), _tdot(self.G, slope - share)])
        return float(value.sum()), grad

    def bounds(self) -> list[tuple[float | None, float | None]]:
        k = self.F.shape[1]
        # Only when F is an indicator do bounds on eta bound log b itself.
        indicator = bool(np.all((self.F == 0) | (self.F == 1)))
        eta = [_LOG_B_BOUNDS] * k if indicator else [(None, None)] * k
        return [(None, None)] * k + eta + [(None, None)] * self.G.shape[1]


# einsum instead of @: these matrices are tiny, and BLAS's thread start-up on a busy machine cost
# 10-20x the arithmetic (measured: a 3-head bootstrap test went from 0.2 s to 3.4 s).
def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return np.einsum("ik,k->i", matrix, vector)


def _tdot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return np.einsum("ik,i->k", matrix, vector)


def _minimize(problem: _Problem, starts: Sequence[np.ndarray]) -> np.ndarray:
    """The best L-BFGS-B optimum over `starts`."""
    best, best_value = None, math.inf
    bounds = problem.bounds()
    for start in starts:
        start = np.clip(start, [lo if lo is not None else -np.inf for lo, _ in bounds],
                        [hi if hi is not None else np.inf for _, hi in bounds])
        result = minimize(problem.objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                          options=_LBFGS_OPTIONS)
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    return best


def _single(z: np.ndarray, y: np.ndarray, delta: float) -> _Problem:
    ones = np.ones((len(z), 1))
    return _Problem(z, y, ones, ones, delta)


def _default_grid(loss: np.ndarray) -> np.ndarray:
    """(c, log b, e) starting points placed relative to the data's own loss range."""
    low, mid = float(loss.min()), float(np.median(loss))
    rows = []
    for fraction in _E_FRACTIONS:
        E = fraction * low
        reducible = math.log(max(mid - E, 1e-3 * mid))
        rows += [(reducible + dc, math.log(b), math.log(E)) for b in _B_GRID for dc in _C_OFFSETS]
    return np.array(rows)


def _grid_values(grid: np.ndarray, z: np.ndarray, y: np.ndarray, delta: float) -> np.ndarray:
    """The objective at every grid row at once (rows of (c, log b, e))."""
    c, log_b, e = (grid[:, i : i + 1] for i in range(3))
    log_pred = np.logaddexp(c - np.exp(log_b) * z, e)
    return huber(log_pred - y, delta)[0].sum(axis=1)


def _best_of_grid(grid: np.ndarray, z: np.ndarray, y: np.ndarray, delta: float, count: int) -> list[np.ndarray]:
    values = _grid_values(grid, z, y, delta)
    return [grid[i] for i in np.argsort(values)[:count]]


def _to_theta(law: LossLaw, n_ref: float) -> np.ndarray:
    return np.array([law.b * (math.log(law.a) - math.log(n_ref)), math.log(law.b), math.log(law.E)])


def _to_law(c: float, log_b: float, e: float, n_ref: float) -> LossLaw:
    b = math.exp(log_b)
    return LossLaw(a=math.exp(math.log(n_ref) + c / b), b=b, E=math.exp(e))


def _check_points(n: np.ndarray, loss: np.ndarray, what: str) -> None:
    if n.shape != loss.shape or n.ndim != 1:
        raise ValueError(f"{what}: N and loss must be 1-D arrays of the same length, got {n.shape} and {loss.shape}")
    if len(n) < 3:
        raise ValueError(f"{what}: {len(n)} point(s) cannot determine a, b and E; train at least 3 sizes")
    if not (np.all(np.isfinite(n)) and np.all(n > 0) and np.all(np.isfinite(loss)) and np.all(loss > 0)):
        raise ValueError(f"{what}: N and loss must be positive and finite")


@one_blas_thread()
def fit_loss_law(n: ArrayLike, loss: ArrayLike, *, init_grid: Sequence[LossLaw] | None = None,
                 delta: float = HUBER_DELTA) -> LossLaw:
    """Fit L(N) = (a/N)^b + E to points (N, loss); init_grid overrides the starting laws."""
    n, loss = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    _check_points(n, loss, "fit_loss_law")
    n_ref = _geometric_mean(n)
    z, y = np.log(n / n_ref), np.log(loss)
    grid = _default_grid(loss) if init_grid is None else np.array([_to_theta(law, n_ref) for law in init_grid])
    theta = _minimize(_single(z, y, delta), _best_of_grid(grid, z, y, delta, _STARTS))
    return _to_law(*theta, n_ref)


def _geometric_mean(values: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(values))))


@dataclass(frozen=True)
class HeldOut:
    """The largest size of a head configuration, left out of the fit and predicted."""

    n: float
    observed: float  # mean loss of the runs at that size
    predicted: float

    @property
    def relative_error(self) -> float:
        return self.predicted / self.observed - 1.0


@dataclass(frozen=True)
class HeadFit:
    """The fitted law of one head configuration (heads None: a table without heads)."""

    heads: Heads | None
    law: LossLaw
    samples: tuple[LossLaw, ...]  # bootstrap refits
    intervals: dict[str, tuple[float, float]]  # "a", "b", "E" -> percentile interval
    r2: float  # on loss, linear scale
    residuals: tuple[float, ...]  # log(predicted) - log(observed), per point
    n_points: int
    held_out: HeldOut | None
    confidence: float

    def predict_interval(self, n: float) -> tuple[float, float, float]:
        """(predicted loss, lower, upper) at size n; the bounds are bootstrap percentiles."""
        if not self.samples:
            raise ValueError("this fit has no bootstrap samples; fit with bootstrap > 0 to get intervals")
        lo, hi = _percentiles(np.array([law.loss(n) for law in self.samples]), self.confidence)
        return self.law.loss(n), lo, hi


@dataclass(frozen=True)
class FitResult:
    fits: dict[Heads | None, HeadFit]
    shared_E: bool
    confidence: float

    @property
    def laws(self) -> dict[Heads, LossLaw]:
        """The laws of every head configuration (table points without heads are left out)."""
        return {h: fit.law for h, fit in self.fits.items() if h is not None}

    def predict_interval(self, heads: Heads | None, n: float) -> tuple[float, float, float]:
        if heads not in self.fits:
            known = ", ".join(str(h) for h in self.fits)
            raise ValueError(f"no fit for heads {heads}; fitted: {known}")
        return self.fits[heads].predict_interval(n)


Points = Mapping[Heads | None, tuple[ArrayLike, ArrayLike]]


def points_by_heads(records: Sequence[Record]) -> dict[Heads | None, tuple[np.ndarray, np.ndarray]]:
    """{heads: (N, loss)} from records, heads sorted (None last)."""
    grouped: dict[Heads | None, list[tuple[int, float]]] = {}
    for record in records:
        grouped.setdefault(record.heads, []).append((record.non_embedding, record.loss))
    order = sorted(grouped, key=lambda h: (h is None, h or (0, 0)))
    return {h: (np.array([p[0] for p in grouped[h]], dtype=float), np.array([p[1] for p in grouped[h]]))
            for h in order}


def _as_points(records_or_points: Sequence[Record] | Points) -> dict[Heads | None, tuple[np.ndarray, np.ndarray]]:
    if isinstance(records_or_points, Mapping):
        points = {h: (np.asarray(n, dtype=float), np.asarray(loss, dtype=float))
                  for h, (n, loss) in records_or_points.items()}
    else:
        points = points_by_heads(records_or_points)
    if not points:
        raise ValueError("no points to fit; load some run records first")
    for heads, (n, loss) in points.items():
        _check_points(n, loss, f"heads {heads}")
    return points


@dataclass(frozen=True)
class _Stacked:
    """All head configurations' points in one array, each group's N relative to its own N_ref."""

    heads: list[Heads | None]
    group: np.ndarray  # group index per point
    n: np.ndarray
    loss: np.ndarray
    n_ref: np.ndarray  # per group

    @property
    def z(self) -> np.ndarray:
        return np.log(self.n / self.n_ref[self.group])

    def shared_E_problem(self, rows: np.ndarray, delta: float) -> _Problem:
        """Points `rows` with (c, log b) per group and one E for all."""
        indicator = np.eye(len(self.heads))[self.group[rows]]
        return _Problem(self.z[rows], np.log(self.loss[rows]), indicator, np.ones((len(rows), 1)), delta)


def _stack(points: dict[Heads | None, tuple[np.ndarray, np.ndarray]]) -> _Stacked:
    heads = list(points)
    group = np.concatenate([np.full(len(points[h][0]), i) for i, h in enumerate(heads)])
    return _Stacked(
        heads=heads,
        group=group,
        n=np.concatenate([points[h][0] for h in heads]),
        loss=np.concatenate([points[h][1] for h in heads]),
        n_ref=np.array([_geometric_mean(points[h][0]) for h in heads]),
    )


def _fit_groups(data: _Stacked, rows: np.ndarray, shared_E: bool, delta: float,
                warm: np.ndarray | None) -> np.ndarray:
    """theta of all groups at once: independent laws (one E each) or one shared E.

    Independent groups are fitted one by one (the joint objective is separable). A shared E is
    fitted jointly from the independent fits, once per candidate E (their median and each group's).
    """
    H = len(data.heads)
    if not shared_E:
        theta = np.empty((3, H))
        for g in range(H):
            mine = rows[data.group[rows] == g]
            z, y = data.z[mine], np.log(data.loss[mine])
            problem, grid = _single(z, y, delta), _default_grid(data.loss[mine])
            if warm is None:
                starts = _best_of_grid(grid, z, y, delta, _STARTS)
            else:
                # A resample usually stays in the full fit's basin; the best grid point is tried too
                # only when it already beats the warm start, i.e. when the resample moved elsewhere.
                start = warm.reshape(3, H)[:, g]
                best = _best_of_grid(grid, z, y, delta, 1)[0]
                better = _grid_values(best[None], z, y, delta)[0] < problem.objective(start)[0]
                starts = [start, best] if better else [start]
            theta[:, g] = _minimize(problem, starts)
        return theta.ravel()
    problem = data.shared_E_problem(rows, delta)
    if warm is not None:
        return _minimize(problem, [warm])
    independent = _fit_groups(data, rows, False, delta, None).reshape(3, H)
    candidates = sorted({float(np.median(independent[2])), *map(float, independent[2])})
    return _minimize(problem, [np.concatenate([independent[0], independent[1], [e]]) for e in candidates])


def _laws_of(theta: np.ndarray, data: _Stacked, shared_E: bool) -> list[LossLaw]:
    H = len(data.heads)
    c, log_b, e = theta[:H], theta[H : 2 * H], theta[2 * H :]
    return [_to_law(c[g], log_b[g], e[0] if shared_E else e[g], data.n_ref[g]) for g in range(H)]


@one_blas_thread()
def fit_heads(records_or_points: Sequence[Record] | Points, *, shared_E: bool = False, bootstrap: int = 200,
              seed: int = 0, confidence: float = 0.95, delta: float = HUBER_DELTA) -> FitResult:
    """Fit L(N; H) = (a_H/N)^b_H + E_H for every head configuration H.

    shared_E fits one E for all H jointly. Bootstrap: resample each H's points with replacement
    (shared_E: within each H, refitting all jointly), refit from the full-data optimum, and
    take percentile intervals. held_out: refit without each H's largest size (when it has at
    least 4 distinct sizes) and predict it.
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap} must be >= 0 (0 skips the intervals)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95")
    data = _stack(_as_points(records_or_points))
    everything = np.arange(len(data.n))
    theta = _fit_groups(data, everything, shared_E, delta, None)
    laws = _laws_of(theta, data, shared_E)

    rng = np.random.default_rng(seed)
    members = [everything[data.group == g] for g in range(len(data.heads))]
    samples = []
    for _ in range(bootstrap):
        rows = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        samples.append(_laws_of(_fit_groups(data, rows, shared_E, delta, theta), data, shared_E))

    held_out = _held_out(data, members, shared_E, delta, theta)
    fits = {}
    for g, heads in enumerate(data.heads):
        n, loss = data.n[members[g]], data.loss[members[g]]
        predicted = np.array([laws[g].loss(x) for x in n])
        group_samples = tuple(s[g] for s in samples)
        fits[heads] = HeadFit(
            heads=heads,
            law=laws[g],
            samples=group_samples,
            intervals=_law_intervals(group_samples, confidence),
            r2=_r2(loss, predicted),
            residuals=tuple(np.log(predicted / loss).tolist()),
            n_points=len(n),
            held_out=held_out[g],
            confidence=confidence,
        )
    return FitResult(fits, shared_E, confidence)


def _held_out(data: _Stacked, members: list[np.ndarray], shared_E: bool, delta: float,
              theta: np.ndarray) -> list[HeldOut | None]:
    largest = [data.n[m].max() if len(np.unique(data.n[m])) >= 4 else None for m in members]
    if all(x is None for x in largest):
        return [None] * len(members)
    keep = np.array([largest[g] is None or data.n[i] < largest[g] for i, g in enumerate(data.group)])
    laws = _laws_of(_fit_groups(data, np.flatnonzero(keep), shared_E, delta, theta), data, shared_E)
    out = []
    for g, n_max in enumerate(largest):
        if n_max is None:
            out.append(None)
            continue
        observed = float(data.loss[members[g]][data.n[members[g]] == n_max].mean())
        out.append(HeldOut(n=float(n_max), observed=observed, predicted=float(laws[g].loss(n_max))))
    return out


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _law_intervals(samples: Sequence[LossLaw], confidence: float) -> dict[str, tuple[float, float]]:
    if not samples:
        return {}
    return {p: _percentiles(np.array([getattr(s, p) for s in samples]), confidence) for p in LAW_PARAMS}


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((observed - observed.mean()) ** 2))
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / total if total > 0 else math.nan


@dataclass(frozen=True)
class JointFit:
    """One law for every head configuration: E shared; log reducible loss at n_ref and log b
    linear in (log2 n_q, log2 n_kv), plus their product when `interaction`.

    c(H) = c_coef . f(H) is log((a_H/n_ref)^b_H), log b_H = log_b_coef . f(H), with
    f(H) = (1, log2 n_q, log2 n_kv[, log2 n_q * log2 n_kv]). held_out: for each head
    configuration left out of the fit, the mean relative loss error on its points.
    """

    E: float
    n_ref: float
    c_coef: tuple[float, ...]
    log_b_coef: tuple[float, ...]
    interaction: bool
    r2: float
    n_points: int
    heads: tuple[Heads, ...]
    held_out: dict[Heads, float]

    def predict_law(self, n_q: int, n_kv: int) -> LossLaw:
        f = _features(np.array([[n_q, n_kv]]), self.interaction)[0]
        return _to_law(float(f @ self.c_coef), float(f @ self.log_b_coef), math.log(self.E), self.n_ref)


def _features(heads: np.ndarray, interaction: bool) -> np.ndarray:
    x, y = np.log2(heads[:, 0]), np.log2(heads[:, 1])
    columns = [np.ones_like(x), x, y] + ([x * y] if interaction else [])
    return np.stack(columns, axis=1)


@one_blas_thread()
def fit_joint(records_or_points: Sequence[Record] | Points, *, interaction: bool = True, held_out: bool = True,
              delta: float = HUBER_DELTA) -> JointFit:
    """Fit the JointFit model on every point of every head configuration (records without heads are ignored).

    Started from the per-configuration fits, regressed onto the features. held_out leaves each
    configuration out in turn (skipping one whose removal leaves the features underdetermined).
    """
    points = {h: p for h, p in _as_points(records_or_points).items() if h is not None}
    if not points:
        raise ValueError("the joint model needs points with head configurations (n_q, n_kv); these have none")
    heads = np.array(list(points), dtype=float).reshape(-1, 2)
    features = _features(heads, interaction)
    if len(points) < features.shape[1] or np.linalg.matrix_rank(features) < features.shape[1]:
        raise ValueError(
            f"the joint model{' with interaction' if interaction else ''} needs at least {features.shape[1]} head "
            f"configurations whose log2 n_q and log2 n_kv are not collinear; got {sorted(points)}"
            + ("; or fit without the interaction term" if interaction else "")
        )
    data = _stack(points)
    independent = dict(zip(points, _laws_of(_fit_groups(data, np.arange(len(data.n)), False, delta, None),
                                            data, False)))
    fit = _fit_joint(points, independent, interaction, delta)
    if not held_out:
        return fit
    errors = {}
    for left_out in points:
        rest = {h: p for h, p in points.items() if h != left_out}
        rest_features = _features(np.array(list(rest), dtype=float), interaction)
        if len(rest) < features.shape[1] or np.linalg.matrix_rank(rest_features) < features.shape[1]:
            continue
        law = _fit_joint(rest, independent, interaction, delta).predict_law(*left_out)
        n, loss = points[left_out]
        errors[left_out] = float(np.mean(np.abs(np.array([law.loss(x) for x in n]) / loss - 1.0)))
    return dataclasses.replace(fit, held_out=errors)


def _fit_joint(points: dict[Heads, tuple[np.ndarray, np.ndarray]], independent: dict[Heads, LossLaw],
               interaction: bool, delta: float) -> JointFit:
    heads = list(points)
    n = np.concatenate([points[h][0] for h in heads])
    loss = np.concatenate([points[h][1] for h in heads])
    group = np.concatenate([np.full(len(points[h][0]), i) for i, h in enumerate(heads)])
    n_ref = _geometric_mean(n)
    per_head = _features(np.array(heads, dtype=float), interaction)
    problem = _Problem(np.log(n / n_ref), np.log(loss), per_head[group], np.ones((len(n), 1)), delta)
    # Start from the independent laws: least squares of their (c, log b) at n_ref on the features.
    c = np.array([_to_theta(independent[h], n_ref)[0] for h in heads])
    log_b = np.array([math.log(independent[h].b) for h in heads])
    gamma = np.linalg.lstsq(per_head, c, rcond=None)[0]
    eta = np.linalg.lstsq(per_head, log_b, rcond=None)[0]
    e_values = sorted({float(np.median([math.log(independent[h].E) for h in heads])),
                       math.log(min(independent[h].E for h in heads))})
    theta = _minimize(problem, [np.concatenate([gamma, eta, [e]]) for e in e_values])
    k = per_head.shape[1]
    return JointFit(
        E=math.exp(theta[-1]),
        n_ref=n_ref,
        c_coef=tuple(theta[:k].tolist()),
        log_b_coef=tuple(theta[k : 2 * k].tolist()),
        interaction=interaction,
        r2=_r2(loss, np.exp(problem.log_pred(theta))),
        n_points=len(n),
        heads=tuple(heads),
        held_out={},
    )
