"""Read matmul FLOPs out of compiled HLO text: the compiler's own count of the dots it will run."""

from __future__ import annotations

import math
import re

# "%name = f32[2,64,128]{2,1,0} op(...)"; tuple-shaped and token results never feed a dot directly.
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[a-z0-9]+\[([\d,]*)\]")
_DOT = re.compile(r"=\s*[a-z0-9]+\[([\d,]*)\][^ ]*\s+dot\(\s*%?([\w.\-]+)\s*,\s*%?([\w.\-]+)\s*\)(.*)$")
_LHS_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def dot_flops(hlo_text: str) -> int:
    """2 * |result| * |contracted dims| summed over every dot in the module.

    Instruction names are unique within an HLO module, so one table of definitions serves every
    computation (fused ones included). A dot inside a loop body is counted once: callers must
    unroll loops (the model does) for the count to cover every iteration.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            shapes[m.group(1)] = _dims(m.group(2))
    total = 0
    for line in hlo_text.splitlines():
        m = _DOT.search(line)
        if not m:
            continue
        result, lhs_name, attrs = _dims(m.group(1)), m.group(2), m.group(4)
        contract = _LHS_CONTRACT.search(attrs)
        if lhs_name not in shapes or contract is None:
            raise ValueError(f"cannot read the operands of this dot: {line.strip()[:200]}")
        lhs = shapes[lhs_name]
        total += 2 * math.prod(result) * math.prod(lhs[i] for i in _dims(contract.group(1)))
    return total
