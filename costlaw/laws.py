"""Loss laws: the fitted curves L(N) = (a/N)^b + E and L(N, D) = E + A/N^alpha + B/D^beta as plain data."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LossLaw:
    """L(N) = (a / N)^b + E for one head configuration; N is the non-embedding parameter count."""

    a: float
    b: float
    E: float

    def loss(self, n: float) -> float:
        return (self.a / n) ** self.b + self.E

    def n_for_loss(self, target: float) -> float:
        """N* = a / (L* - E)^(1/b): the size that reaches `target`; inf when target <= E (unreachable)."""
        if target <= self.E:
            return math.inf
        # in logs: (L* - E)^(1/b) underflows to 0 for small b, where N* is astronomically large
        log_n = math.log(self.a) - math.log(target - self.E) / self.b
        return math.exp(log_n) if log_n < 700 else math.inf


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, approach 3)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) minimising the loss under C = 6 N D (the closed form of approach 3)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        n = g * (flops / 6.0) ** (self.beta / (self.alpha + self.beta))
        return n, flops / (6.0 * n)


Heads = tuple[int, int]  # (n_q, n_kv)


def laws_to_json(laws: dict[Heads, LossLaw]) -> list[dict]:
    """Per-head laws as JSON rows {"n_q", "n_kv", "a", "b", "E"} (the "laws" key of `costlaw fit --json`)."""
    return [{"n_q": h[0], "n_kv": h[1], "a": law.a, "b": law.b, "E": law.E} for h, law in sorted(laws.items())]


def laws_from_json(rows: list[dict]) -> dict[Heads, LossLaw]:
    """Inverse of laws_to_json; raises ValueError naming the first malformed row."""
    laws = {}
    for i, row in enumerate(rows):
        try:
            heads = (int(row["n_q"]), int(row["n_kv"]))
            law = LossLaw(a=float(row["a"]), b=float(row["b"]), E=float(row["E"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"law row {i} must have numeric n_q, n_kv, a, b, E; got {row!r}") from e
        valid = (
            heads[0] > 0 and heads[1] > 0 and heads[0] % heads[1] == 0
            and all(math.isfinite(x) for x in (law.a, law.b, law.E)) and law.a > 0 and law.b > 0
        )
        if not valid:
            raise ValueError(
                f"law row {i} is not a valid law (positive n_q and n_kv with n_kv dividing n_q; finite a > 0, "
                f"b > 0, E): {row!r}"
            )
        laws[heads] = law
    return laws
