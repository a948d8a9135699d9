"""Tokenizers behind one interface: bytes (the default, no files), a BPE trained here, or any tokenizer.json."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable, Protocol

from experiments.errors import DataError

BYTE_SPEC = "byte"
EOS_TOKEN = "<|endoftext|>"
# End-of-document tokens of common released tokenizers, tried in this order when a tokenizer.json
# is loaded; the BPE trained here uses the first.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")


class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer. `spec` round-trips: load(t.spec) is the same tokenizer."""

    @property
    def spec(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and EOS as 256: any text round-trips, no vocabulary file."""

    spec: str = BYTE_SPEC
    vocab_size: int = 257
    eos_id: int = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # EOS is a document boundary, not text; invalid byte runs (a window cut mid-character) become U+FFFD
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class JsonTokenizer:
    """A Hugging Face `tokenizers` tokenizer read from a tokenizer.json file."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        tokenizers = _import_tokenizers()
        if not self.path.is_file():
            raise DataError(f"no tokenizer file at {self.path}; give the path of a tokenizer.json (--tokenizer json:PATH)")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exceptions for any parse failure
            raise DataError(f"{self.path} is not a readable tokenizer.json ({str(e).splitlines()[0]}); "
                            "save one with tokenizers.Tokenizer.save or pass --tokenizer byte") from e
        vocab = self._tok.get_vocab(with_added_tokens=True)
        eos = next((vocab[t] for t in EOS_CANDIDATES if t in vocab), None)
        if eos is None:
            raise DataError(f"{self.path} has no end-of-document token (looked for {', '.join(EOS_CANDIDATES)}); "
                            f"add one, e.g. tokenizer.add_special_tokens(['{EOS_TOKEN}'])")
        self._eos = eos
        self._vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def spec(self) -> str:
        return f"json:{self.path}"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many documents at once, in parallel threads inside the Rust library."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def load(spec: str, base: str | pathlib.Path | None = None) -> ByteTokenizer | JsonTokenizer:
    """The tokenizer a spec names: "byte" or "json:PATH" (a relative PATH is taken from `base` when given)."""
    if spec == BYTE_SPEC:
        return ByteTokenizer()
    if spec.startswith("json:") and len(spec) > 5:
        path = pathlib.Path(spec[5:])
        return JsonTokenizer(path if base is None or path.is_absolute() else pathlib.Path(base) / path)
    raise DataError(f"unknown tokenizer {spec!r}; use 'byte' or 'json:PATH/tokenizer.json'")


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | pathlib.Path, *, show_progress: bool = False) -> JsonTokenizer:
    """Train a byte-level BPE on `texts` (exact round trip of any text, no unknown tokens), save it to `out`.

    The vocabulary holds the 256 byte symbols, EOS and the merges learned, vocab_size in all; a
    corpus too small to learn that many merges gives fewer, which is reported as an error rather
    than silently training a smaller model than asked for.
    """
    tokenizers = _import_tokenizers()
    minimum = 256 + 2  # bytes, EOS and at least one merge
    if vocab_size < minimum or vocab_size > 2**32:
        raise DataError(f"BPE vocabulary size {vocab_size} is out of range; use at least {minimum} (e.g. --tokenizer bpe:8192)")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise DataError(f"the corpus only supports a BPE vocabulary of {got}, not {vocab_size}; "
                        f"ask for at most {got} or add text")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return JsonTokenizer(out)


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise DataError("BPE and tokenizer.json need the `tokenizers` package: `pip install tokenizers` "
                        "(or use --tokenizer byte)") from e
    return tokenizers
