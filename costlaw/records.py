"""Load training-run records (the trainer's JSON) and loss tables (CSV, JSONL) into one list of fit points."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from costlaw.arch import Architecture
from costlaw.laws import Heads

RECORD_KIND = "gqa-costlaw-run"
SUPPORTED_SCHEMA_VERSION = 1
TABLE_SUFFIXES = (".csv", ".jsonl")

# Accepted column names, first match wins; the Chinchilla CSV uses "Model Size" and "Training FLOP".
N_COLUMNS = ("N", "non_embedding", "Model Size")
D_COLUMNS = ("D", "train_tokens", "tokens")
FLOP_COLUMNS = ("Training FLOP", "C")


class RecordsError(ValueError):
    """Nothing usable to load: a missing path, or a folder without any record or table."""


class RecordWarning(UserWarning):
    """A record or table row that was skipped; the message names the file and the reason."""


@dataclass(frozen=True)
class Record:
    """One fit point: a finished run (or a table row) with its size, heads and final held-out loss.

    heads is None for tables without n_q/n_kv columns (e.g. the Chinchilla data);
    architecture is None for every table row. loss is the held-out loss at the training
    context at the last evaluation; losses_by_context holds every context evaluated then,
    so the flatness of relative loss gaps across contexts can be checked.
    """

    source: str
    heads: Heads | None
    architecture: Architecture | None
    non_embedding: int
    train_tokens: int | None
    loss: float
    losses_by_context: dict[int, float] = field(hash=False)
    train_context: int | None


@dataclass(frozen=True)
class LoadResult:
    records: list[Record]
    warnings: list[str]
    duplicates: list[tuple[str, str]]  # (kept, dropped) sources


class _Skip(Exception):
    """Why one record or row cannot be used; becomes one warning."""


def load_records(paths: Sequence[str | Path]) -> LoadResult:
    """Read run records and loss tables from files and folders (searched recursively).

    Folders contribute every *.json (run records), *.csv and *.jsonl (tables) inside.
    A bad file or row is skipped with one RecordWarning naming it and the reason; the
    same messages are returned in `warnings`. Two runs with the same architecture, training
    tokens and config (seed included), or two identical table rows, are duplicates: the
    first is kept and the pair reported. Raises RecordsError for a path that does not
    exist, or when nothing at all was found.
    """
    if not paths:
        raise RecordsError("no record paths given; pass run-record JSON files, CSV/JSONL tables or folders")
    files = _files(paths)
    records, messages, duplicates = [], [], []
    seen: dict[object, str] = {}
    for path in files:
        for item in _read_file(path):
            if isinstance(item, str):
                messages.append(item)
                warnings.warn(item, RecordWarning, stacklevel=2)
                continue
            record, key = item
            if key in seen:
                duplicates.append((seen[key], record.source))
                continue
            seen[key] = record.source
            records.append(record)
    if not records and not messages:
        raise RecordsError(
            f"no run records (*.json) or loss tables (*.csv, *.jsonl) found in {', '.join(map(str, paths))}"
        )
    return LoadResult(records, messages, duplicates)


def _files(paths: Sequence[str | Path]) -> list[Path]:
    """Every file to read, in a stable order, each once even when named twice."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", *TABLE_SUFFIXES))
            found.update(dict.fromkeys(matches))
        elif path.is_file():
            found[path] = None
        else:
            raise RecordsError(
                f"{path} does not exist; pass run-record JSON files, CSV/JSONL tables or folders holding them"
            )
    return list(found)


def _read_file(path: Path) -> Iterator[str | tuple[Record, object]]:
    """(record, duplicate key) pairs, or warning strings, from one file."""
    try:
        if path.suffix == ".csv":
            yield from _read_table(path, _csv_rows(path))
        elif path.suffix == ".jsonl":
            yield from _read_table(path, _jsonl_rows(path))
        else:
            yield _parse_run(path)
    except _Skip as skip:
        yield f"skipped {path}: {skip}"


def _parse_run(path: Path) -> tuple[Record, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise _Skip(f"cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise _Skip(f"not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise _Skip(f"not a run record (kind {kind!r}, expected {RECORD_KIND!r})")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SUPPORTED_SCHEMA_VERSION:
        raise _Skip(
            f"schema_version {version!r} is not supported (this costlaw reads up to {SUPPORTED_SCHEMA_VERSION}); "
            "upgrade costlaw"
        )
    missing = [k for k in ("architecture", "params", "train_context", "train_tokens", "eval_losses") if k not in data]
    if missing:
        raise _Skip(f"incomplete record: missing {', '.join(missing)}")
    try:
        arch = Architecture(**data["architecture"])
    except (TypeError, ValueError) as e:
        raise _Skip(f"bad architecture: {e}") from None
    non_embedding = _positive_int(_get(data["params"], "non_embedding", "params"), "params.non_embedding")
    train_context = _positive_int(data["train_context"], "train_context")
    train_tokens = _positive_int(data["train_tokens"], "train_tokens")
    by_context = _final_eval_losses(data["eval_losses"], train_context, data.get("config"))
    record = Record(
        source=str(path),
        heads=(arch.num_q_heads, arch.num_kv_heads),
        architecture=arch,
        non_embedding=non_embedding,
        train_tokens=train_tokens,
        loss=by_context[train_context],
        losses_by_context=by_context,
        train_context=train_context,
    )
    # The full config holds the seed and every hyperparameter: the same config twice is the same run.
    config = json.dumps(data.get("config"), sort_keys=True, default=str)
    return record, ("run", arch, train_tokens, config)


def _final_eval_losses(rows: object, train_context: int, config: object) -> dict[int, float]:
    """{context: loss} at the last evaluation step; the training context must be among them."""
    if not isinstance(rows, list) or not rows:
        raise _Skip("incomplete record: no eval_losses")
    try:
        steps = [int(row["step"]) for row in rows]
        last = max(steps)
        by_context = {int(row["context"]): _loss(row["loss"]) for row, step in zip(rows, steps) if step == last}
    except (KeyError, TypeError, ValueError) as e:
        raise _Skip(f"bad eval_losses row ({e}); each needs step, context and a positive finite loss") from None
    planned = config.get("train_steps") if isinstance(config, dict) else None
    if isinstance(planned, int) and last < planned:
        raise _Skip(f"incomplete record: last evaluation at step {last} of {planned}")
    if train_context not in by_context:
        raise _Skip(f"incomplete record: no eval loss at the training context {train_context} at step {last}")
    return by_context


def _loss(value: object) -> float:
    try:
        loss = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        loss = math.nan
    if not (math.isfinite(loss) and loss > 0):
        raise ValueError(f"loss {value!r} is not a positive finite number")
    return loss


def _positive_int(value: object, name: str) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _Skip(f"{name}={value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0 and number == round(number)):
        raise _Skip(f"{name}={value!r} is not a positive integer")
    return int(round(number))


def _get(mapping: object, key: str, name: str) -> object:
    if not isinstance(mapping, dict) or key not in mapping:
        raise _Skip(f"incomplete record: missing {name}.{key}")
    return mapping[key]


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            # Line 1 is the header, so data rows start on line 2.
            yield from enumerate(csv.DictReader(f), start=2)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _Skip(f"cannot read it as CSV ({e})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _Skip(f"cannot read it ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, f"not valid JSON ({e})"
            continue
        yield number, row if isinstance(row, dict) else f"not a JSON object ({type(row).__name__})"


def _read_table(path: Path, rows: Iterator[tuple[int, dict | str]]) -> Iterator[str | tuple[Record, object]]:
    columns = None
    for line, row in rows:
        source = f"{path}:{line}"
        if isinstance(row, str):
            yield f"skipped {source}: {row}"
            continue
        if columns is None:
            columns = _table_columns(row.keys())
        try:
            record = _parse_row(source, row, columns)
        except _Skip as e:
            yield f"skipped {source}: {e}"
            continue
        # Without run metadata only an identical row is known to be the same run.
        yield record, ("row", record.heads, record.non_embedding, record.train_tokens, record.train_context, record.loss)
    if columns is None:
        raise _Skip("the table has no rows")


@dataclass(frozen=True)
class _Columns:
    n: str
    d: str | None
    flop: str | None
    heads: bool
    context: bool


def _table_columns(names: object) -> _Columns:
    names = list(names)  # type: ignore[call-overload]
    n = next((c for c in N_COLUMNS if c in names), None)
    if n is None or "loss" not in names:
        raise _Skip(
            f"a loss table needs a 'loss' column and a parameter-count column ({', '.join(N_COLUMNS)}); "
            f"found columns {', '.join(names)}"
        )
    if ("n_q" in names) != ("n_kv" in names):
        raise _Skip("give both n_q and n_kv columns, or neither (then the rows have no head configuration)")
    return _Columns(
        n=n,
        d=next((c for c in D_COLUMNS if c in names), None),
        flop=next((c for c in FLOP_COLUMNS if c in names), None),
        heads="n_q" in names,
        context="context" in names,
    )


def _parse_row(source: str, row: dict, columns: _Columns) -> Record:
    n = _number(_cell(row, columns.n), columns.n)
    if not n > 0:
        raise _Skip(f"{columns.n}={n!r} is not positive")
    try:
        loss = _loss(_cell(row, "loss"))
    except (TypeError, ValueError) as e:
        raise _Skip(str(e)) from None
    tokens = None
    if columns.d is not None and row.get(columns.d) not in (None, ""):
        tokens = _number(row[columns.d], columns.d)
    elif columns.flop is not None and row.get(columns.flop) not in (None, ""):
        tokens = _number(row[columns.flop], columns.flop) / (6.0 * n)  # C = 6 N D
    if tokens is not None and not tokens > 0:
        raise _Skip(f"training tokens {tokens!r} are not positive")
    heads = None
    if columns.heads:
        heads = (_positive_int(_cell(row, "n_q"), "n_q"), _positive_int(_cell(row, "n_kv"), "n_kv"))
        if heads[0] % heads[1]:
            raise _Skip(f"n_kv={heads[1]} does not divide n_q={heads[0]}")
    context = _positive_int(_cell(row, "context"), "context") if columns.context else None
    return Record(
        source=source,
        heads=heads,
        architecture=None,
        non_embedding=int(round(n)),
        train_tokens=None if tokens is None else int(round(tokens)),
        loss=loss,
        losses_by_context={} if context is None else {context: loss},
        train_context=context,
    )


def _cell(row: dict, column: str) -> object:
    value = row.get(column)
    if value in (None, ""):
        raise _Skip(f"no value in column {column!r}")
    return value


def _number(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _Skip(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise _Skip(f"{name}={value!r} is not finite")
    return number
