"""Tokenizers: exact round trips, requested vocabulary sizes, specs that round-trip, clear errors."""

import numpy as np
import pytest
import tokenizers

from experiments import tokenizer as tok_lib
from experiments.errors import DataError


def _random_unicode(rng: np.random.Generator, n: int) -> str:
    # all planes, surrogates excluded (they are not encodable text), plus plenty of ASCII and whitespace
    points = rng.integers(0, 0x10FFFF, n)
    points = np.where((points >= 0xD800) & (points < 0xE000), 0x41, points)
    ascii_ = rng.integers(0x20, 0x7F, n)
    chars = np.where(rng.random(n) < 0.5, ascii_, points)
    return "".join(map(chr, chars)) + " \n\t\r\x00é日本"


def _corpus(rng: np.random.Generator, docs: int = 200) -> list[str]:
    words = ["the", "king", "queen", "crown", "sword", "théâtre", "日本", "and", "of", "night", "day"]
    return [" ".join(rng.choice(words, 40)) + f". {i}\n" for i in range(docs)]


def test_byte_round_trip_on_random_unicode():
    rng = np.random.default_rng()
    tok = tok_lib.ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.spec) == (257, 256, "byte")
    for _ in range(20):
        text = _random_unicode(rng, int(rng.integers(1, 300)))
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and max(ids) < 256
        assert tok.decode(ids) == text
        assert tok.decode(ids + [tok.eos_id] + ids) == text + text  # EOS marks a boundary, it is not text
    assert tok_lib.load(tok.spec) == tok


def test_byte_decode_of_a_cut_character_replaces_it():
    tok = tok_lib.ByteTokenizer()
    assert tok.decode(list("é".encode())[:1] + [ord("a")]) == "\ufffda"


def test_bpe_round_trips_with_the_requested_vocab_size(tmp_path):
    rng = np.random.default_rng()
    corpus = _corpus(rng)
    tok = tok_lib.train_bpe(corpus, 320, tmp_path / "bpe" / "tokenizer.json")
    assert tok.vocab_size == 320
    assert tok.eos_id == 0  # the only special token comes first
    assert tok.spec == f"json:{tmp_path / 'bpe' / 'tokenizer.json'}"
    for _ in range(10):  # text the BPE never saw, including characters outside its corpus
        text = _random_unicode(rng, 200)
        ids = tok.encode(text)
        assert max(ids) < tok.vocab_size and tok.eos_id not in ids
        assert tok.decode(ids) == text
    seen = corpus[0]
    assert len(tok.encode(seen)) < len(seen.encode()) / 2  # merges learned: far fewer ids than bytes
    again = tok_lib.load(tok.spec)
    assert again.spec == tok.spec and again.encode(seen) == tok.encode(seen)
    assert tok.encode_batch([seen, corpus[1]]) == [tok.encode(seen), tok.encode(corpus[1])]


def test_bpe_that_the_corpus_cannot_fill_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"only supports a BPE vocabulary of \d+, not 5000"):
        tok_lib.train_bpe(["ab ab ab"], 5000, tmp_path / "t.json")
    with pytest.raises(DataError, match="use at least 258"):
        tok_lib.train_bpe(["ab ab ab"], 100, tmp_path / "t.json")


def test_a_tokenizer_json_given_by_path_loads(tmp_path):
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3, "again": 4}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>"])
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = tok_lib.load(f"json:{path}")
    assert (tok.vocab_size, tok.eos_id) == (5, 1)
    assert tok.encode("hello world again hello") == [2, 3, 4, 2]
    assert tok.encode("hello nope") == [2, 0]
    assert tok_lib.load("json:tokenizer.json", base=tmp_path).encode("world") == [3]  # relative to a base folder


def test_tokenizer_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no tokenizer file at .*missing.json"):
        tok_lib.load(f"json:{tmp_path / 'missing.json'}")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a readable tokenizer.json"):
        tok_lib.load(f"json:{tmp_path / 'garbage.json'}")
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    hf.save(str(tmp_path / "no_eos.json"))
    with pytest.raises(DataError, match="has no end-of-document token"):
        tok_lib.load(f"json:{tmp_path / 'no_eos.json'}")
    with pytest.raises(DataError, match="unknown tokenizer 'gpt2'"):
        tok_lib.load("gpt2")
