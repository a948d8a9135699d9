"""Preparing token data: EOS per document, a split by document that never moves, exact metadata, caching, clear errors."""

import json
import os

import numpy as np
import pytest

from experiments import data
from experiments.errors import DataError

WORDS = ["thou", "art", "king", "crown", "night", "sword", "théâtre", "日本", "and", "of", "fair", "foul"]


def _write_corpus(folder, rng, n=20, prefix="doc"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:03d}.txt").write_text(" ".join(rng.choice(WORDS, int(rng.integers(20, 80)))) + "\n")
    return folder


def _stream(docs, eos_bytes_id=256):
    """The byte-tokenizer stream of documents: their UTF-8 bytes, EOS after each."""
    out = []
    for d in docs:
        out += list(d.text.encode()) + [eos_bytes_id]
    return np.array(out)


def _quiet(_):
    pass


def test_each_document_is_followed_by_eos_and_the_stream_is_exact(tmp_path):
    rng = np.random.default_rng()
    docs = data.read_documents([_write_corpus(tmp_path / "c", rng)])
    prepared = data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=_quiet)
    splits = data.assign_splits(docs, 0.3)
    assert prepared.splits["train"].documents + prepared.splits["val"].documents == 20
    for split in data.SPLITS:
        tokens = prepared.tokens(split)
        assert tokens.dtype == np.uint16
        assert int((tokens == prepared.eos_id).sum()) == prepared.splits[split].documents == len(splits[split]) > 0
        np.testing.assert_array_equal(tokens, _stream(splits[split]))
        assert prepared.tokenizer().decode(tokens) == "".join(d.text for d in splits[split])


def test_metadata_counts_equal_the_token_files(tmp_path):
    rng = np.random.default_rng()
    docs = data.read_documents([_write_corpus(tmp_path / "c", rng)])
    prepared = data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=_quiet)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert (meta["vocab_size"], meta["eos_id"], meta["dtype"], meta["tokenizer"]) == (257, 256, "uint16", "byte")
    for split in data.SPLITS:
        size = (tmp_path / "out" / f"{split}.bin").stat().st_size
        assert size == 2 * meta["splits"][split]["tokens"] == 2 * prepared.tokens(split).size
    assert sum(meta["splits"][s]["tokens"] for s in data.SPLITS) == sum(len(d.text.encode()) + 1 for d in docs)
    assert len(meta["inputs_sha256"]) == 64


def test_split_is_deterministic_and_stable_when_documents_are_added(tmp_path):
    rng = np.random.default_rng()
    corpus = _write_corpus(tmp_path / "c", rng, n=40)
    before = data.read_documents([corpus])
    a = data.prepare(before, tmp_path / "a", val_fraction=0.25, echo=_quiet)
    b = data.prepare(data.read_documents([corpus]), tmp_path / "b", val_fraction=0.25, echo=_quiet)
    for split in data.SPLITS:
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (tmp_path / "b" / f"{split}.bin").read_bytes()
    assert a.inputs_sha256 == b.inputs_sha256
    side = lambda docs: {d.name: s for s, ds in data.assign_splits(docs, 0.25).items() for d in ds}  # noqa: E731
    old = side(before)
    assert set(old.values()) == {"train", "val"}
    _write_corpus(corpus, rng, n=30, prefix="new")
    new = side(data.read_documents([corpus]))
    assert len(new) == 70 and {k: new[k] for k in old} == old


def test_documents_of_a_group_share_a_split():
    docs = [data.Document(name=f"{g}-{i}", group=g, text="x") for g in map(str, range(50)) for i in range(3)]
    splits = data.assign_splits(docs, 0.3)
    for g in {d.group for d in docs}:
        assert len({s for s, ds in splits.items() for d in ds if d.group == g}) == 1


def test_second_prepare_is_a_cache_hit(tmp_path):
    rng = np.random.default_rng()
    docs = data.read_documents([_write_corpus(tmp_path / "c", rng)])
    lines = []
    data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=lines.append)
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    lines.clear()
    data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=lines.append)
    assert len(lines) == 1 and "up to date" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamp
    for changed in (dict(val_fraction=0.5), dict(val_fraction=0.5, force=True)):  # other settings, or forced: redone
        lines.clear()
        data.prepare(docs, tmp_path / "out", echo=lines.append, **changed)
        assert any(line.startswith("wrote ") for line in lines)
    lines.clear()
    data.prepare(docs[:-1], tmp_path / "out", val_fraction=0.5, echo=lines.append)  # other inputs: redone
    assert any(line.startswith("wrote ") for line in lines)


def test_damaged_token_file_is_reported_and_prepare_repairs_it(tmp_path):
    rng = np.random.default_rng()
    docs = data.read_documents([_write_corpus(tmp_path / "c", rng)])
    data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=_quiet)
    train = tmp_path / "out" / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train.bin has [\d,]+ bytes, but meta.json says .* --force"):
        data.open_prepared(tmp_path / "out")
    prepared = data.prepare(docs, tmp_path / "out", val_fraction=0.3, echo=_quiet)  # not a cache hit: files redone
    assert prepared.tokens("train").size == train.stat().st_size // 2


def test_jsonl_and_folder_inputs(tmp_path):
    nested = tmp_path / "books" / "part" / "deep"
    nested.mkdir(parents=True)
    (nested / "b.txt").write_text("second book")
    (tmp_path / "books" / "a.txt").write_text("first book")
    (tmp_path / "books" / "notes.md").write_text("not read: only *.txt in folders")
    (tmp_path / "books" / "blank.txt").write_text("  \n")
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text('{"text": "one", "id": 7}\n\n{"text": "two"}\n{"text": "三"}\n')
    single = tmp_path / "single.text"
    single.write_text("a lone file")
    docs = data.read_documents([tmp_path / "books", jsonl, single])
    assert [(d.name, d.text) for d in docs] == [
        ("books/a.txt", "first book"),
        ("books/part/deep/b.txt", "second book"),
        ("records.jsonl:1", "one"),
        ("records.jsonl:3", "two"),
        ("records.jsonl:4", "三"),
        ("single.text", "a lone file"),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": "cut', r"records.jsonl:2 is not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r'records.jsonl:2 has no string "text" field'),
        ('["text"]\n', r'records.jsonl:1 has no string "text" field'),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    (tmp_path / "records.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        data.read_documents([tmp_path / "records.jsonl"])


def test_input_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match=r"input .*nowhere.txt does not exist"):
        data.read_documents([tmp_path / "nowhere.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no .txt files under the folder .*empty"):
        data.read_documents([tmp_path / "empty"])
    (tmp_path / "blank.txt").write_text(" \n\n")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(DataError, match="every document is empty"):
        data.read_documents([tmp_path / "blank.txt", tmp_path / "blank.jsonl"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text .*at byte 3"):
        data.read_documents([tmp_path / "latin1.txt"])
    one = [data.Document("only", "only", "text")]
    with pytest.raises(DataError, match="none of the 1 document groups fell in the validation split"):
        data.assign_splits(one, 0.1)
    assert data.assign_splits(one, 0.0) == {"train": one, "val": []}
    with pytest.raises(DataError, match=r"unknown --tokenizer 'sentencepiece'"):
        data.prepare(one, tmp_path / "out", tokenizer="sentencepiece", val_fraction=0.0, echo=_quiet)
    with pytest.raises(DataError, match=r"unknown corpus 'wiki'"):
        data.corpus_documents("wiki")


def test_missing_prepared_data_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"no prepared data at .*nothing: run `python -m experiments.data prepare --corpus shakespeare --out"):
        data.open_prepared(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{}")
    with pytest.raises(DataError, match=r"meta.json is damaged .*--force"):
        data.open_prepared(tmp_path / "bad")


def test_bpe_and_tokenizer_json_preparation(tmp_path):
    rng = np.random.default_rng()
    docs = data.read_documents([_write_corpus(tmp_path / "c", rng, n=30)])
    bpe = data.prepare(docs, tmp_path / "bpe", tokenizer="bpe:300", val_fraction=0.3, echo=_quiet)
    assert (bpe.vocab_size, bpe.tokenizer_spec, bpe.dtype) == (300, "json:tokenizer.json", "uint16")
    tok = bpe.tokenizer()
    splits = data.assign_splits(docs, 0.3)
    for split in data.SPLITS:
        tokens = bpe.tokens(split)
        assert int((tokens == tok.eos_id).sum()) == len(splits[split])
        assert tok.decode(tokens) == "".join(d.text for d in splits[split])
    # the same tokenizer given by path gives the same files, from a copy inside the data folder
    again = data.prepare(docs, tmp_path / "json", tokenizer=f"json:{tmp_path / 'bpe' / 'tokenizer.json'}", val_fraction=0.3, echo=_quiet)
    assert (tmp_path / "json" / "tokenizer.json").read_bytes() == (tmp_path / "bpe" / "tokenizer.json").read_bytes()
    np.testing.assert_array_equal(again.tokens("train"), bpe.tokens("train"))


def test_vocabularies_over_65536_ids_are_stored_as_uint32(tmp_path):
    import tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"<unk>": 70_000, "</s>": 70_001}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>"])
    hf.save(str(tmp_path / "big.json"))
    docs = [data.Document("d", "d", "w1 w69999 w65536")]
    prepared = data.prepare(docs, tmp_path / "out", tokenizer=f"json:{tmp_path / 'big.json'}", val_fraction=0.0, echo=_quiet)
    assert prepared.dtype == "uint32"
    np.testing.assert_array_equal(prepared.tokens("train"), [1, 69_999, 65_536, 70_001])
    assert prepared.tokens("val").size == 0


def test_command_line_prepare_and_error(tmp_path, capsys):
    rng = np.random.default_rng()
    corpus = _write_corpus(tmp_path / "c", rng)
    data.main(["prepare", "--input", str(corpus), "--out", str(tmp_path / "out"), "--val-fraction", "0.3"])
    assert "wrote" in capsys.readouterr().out
    data.main(["prepare", "--input", str(corpus), "--out", str(tmp_path / "out"), "--val-fraction", "0.3"])
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        data.main(["prepare", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input ") and "does not exist" in err and "Traceback" not in err


def test_progress_lines_have_rate_and_eta(tmp_path):
    lines = []
    progress = data._Progress(total_chars=1000, total_docs=4, echo=lines.append, every=0.0)
    progress.advance(1, 250)
    assert len(lines) == 1 and "1/4 documents" in lines[0] and "M chars/s" in lines[0] and "eta" in lines[0]


def test_shakespeare_prepares_with_editions_kept_together(tmp_path):
    docs = data.corpus_documents("shakespeare")
    assert len(docs) == 77 and all(d.name.endswith(".txt") and d.name != "metadata.txt" for d in docs)
    groups = {}
    for d in docs:
        groups.setdefault(d.group, []).append(d.name)
    assert len(groups) == 42 and max(map(len, groups.values())) == 2
    assert all(any(not n.endswith("_f.txt") for n in names) for names in groups.values())  # every folio joins a modern edition
    assert sorted(groups["twelfth_night"]) == ["twelfe-night_gut_f.txt", "twelfth_night_gut.txt"]
    prepared = data.prepare(docs, tmp_path / "shk", echo=_quiet)
    splits = data.assign_splits(docs, 0.1)
    val_groups = {d.group for d in splits["val"]}
    assert val_groups and not val_groups & {d.group for d in splits["train"]}
    assert prepared.splits["val"].documents == len(splits["val"]) and prepared.splits["train"].documents == len(splits["train"])
    total = sum(prepared.splits[s].tokens for s in data.SPLITS)
    assert total == sum(len(d.text.encode()) for d in docs) + len(docs)
    assert int((prepared.tokens("val") == 256).sum()) == len(splits["val"])
    assert os.path.getsize(tmp_path / "shk" / "train.bin") == 2 * prepared.splits["train"].tokens
