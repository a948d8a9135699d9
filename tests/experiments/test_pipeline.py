"""Grain pipelines: contiguous windows, disjoint hosts covering an epoch, exact resume from saved state, fixed eval batches."""

import json

import numpy as np
import pytest

from experiments import data, pipeline
from experiments.errors import DataError

T = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    # random characters, so that even short windows are unique and a row identifies its position
    rng = np.random.default_rng()
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    docs = [data.Document(f"d{i}", f"d{i}", "".join(rng.choice(alphabet, int(rng.integers(150, 600))))) for i in range(60)]
    return data.prepare(docs, tmp_path_factory.mktemp("data"), val_fraction=0.3, echo=lambda _: None)


def _window_index(stream, length, stride):
    """Every window of the stream by its content -> its index (windows of random text are unique)."""
    n = pipeline.num_windows(stream.size, length, stride)
    index = {stream[i * stride : i * stride + length].tobytes(): i for i in range(n)}
    assert len(index) == n
    return index


def _epoch(prepared, **kwargs):
    """Window indices one host reads in one epoch, in order (batch_size 1)."""
    index = _window_index(np.asarray(prepared.tokens("train"), np.int32), T + 1, T)
    it = pipeline.train_iterator(prepared, seq_len=T, batch_size=1, num_epochs=1, **kwargs)
    return [index[b[0].tobytes()] for b in it]


def test_rows_are_contiguous_windows_of_the_stream(prepared):
    stream = np.asarray(prepared.tokens("train"), np.int32)
    index = _window_index(stream, T + 1, T)
    it = pipeline.train_iterator(prepared, seq_len=T, batch_size=4, seed=7)
    seen = []
    for _ in range(10):
        batch = next(it)
        assert batch.shape == (4, T + 1) and batch.dtype == np.int32
        for row in batch:
            i = index[row.tobytes()]  # KeyError if a row is not a window starting at a multiple of T
            np.testing.assert_array_equal(row, stream[i * T : i * T + T + 1])
            seen.append(i)
    assert seen != sorted(seen)  # shuffled
    assert len(set(seen)) == len(seen)  # within an epoch, no window twice


def test_two_processes_read_disjoint_windows_covering_the_epoch(prepared):
    n = pipeline.num_windows(prepared.splits["train"].tokens, T + 1, T)
    p0 = _epoch(prepared, seed=3, process_index=0, process_count=2)
    p1 = _epoch(prepared, seed=3, process_index=1, process_count=2)
    assert len(p0) == len(p1) == n // 2
    assert not set(p0) & set(p1)
    assert len(set(p0) | set(p1)) == n - n % 2
    single = _epoch(prepared, seed=3)
    assert sorted(single) == list(range(n)) and single != _epoch(prepared, seed=4)


def test_each_epoch_is_a_new_permutation(prepared):
    n = pipeline.num_windows(prepared.splits["train"].tokens, T + 1, T)
    index = _window_index(np.asarray(prepared.tokens("train"), np.int32), T + 1, T)
    it = pipeline.train_iterator(prepared, seq_len=T, batch_size=1, num_epochs=2, seed=3)
    order = [index[b[0].tobytes()] for b in it]
    assert len(order) == 2 * n
    assert sorted(order[:n]) == sorted(order[n:]) == list(range(n)) and order[:n] != order[n:]


@pytest.mark.parametrize("process_count", [1, 2])
def test_restored_state_continues_with_the_same_batches(prepared, process_count):
    n = pipeline.num_windows(prepared.splits["train"].tokens, T + 1, T)
    batch = 3
    k = n // process_count // batch - 1  # the batches after the restore cross into the second epoch
    make = lambda p: pipeline.train_iterator(prepared, seq_len=T, batch_size=batch, seed=11, process_index=p, process_count=process_count)  # noqa: E731
    states, expected = [], []
    for p in range(process_count):
        it = make(p)
        for _ in range(k):
            next(it)
        states.append(json.loads(json.dumps(it.get_state())))  # what a JSON checkpoint stores
        expected.append([next(it) for _ in range(6)])
    # every host is at the same position: one saved state serves them all
    assert all(s == states[0] for s in states)
    for p in range(process_count):
        fresh = make(p)
        fresh.set_state(states[p])
        for want, got in zip(expected[p], [next(fresh) for _ in range(6)], strict=True):
            np.testing.assert_array_equal(got, want)
    if process_count == 2:
        assert not np.array_equal(expected[0][0], expected[1][0])


def test_state_is_independent_of_worker_processes(prepared):
    baseline = pipeline.train_iterator(prepared, seq_len=T, batch_size=2, seed=5)
    want = [next(baseline) for _ in range(9)]
    it = pipeline.train_iterator(prepared, seq_len=T, batch_size=2, seed=5, worker_count=1)
    try:
        got = [next(it) for _ in range(3)]
        state = it.get_state()
        in_process = pipeline.train_iterator(prepared, seq_len=T, batch_size=2, seed=5)
        in_process.set_state(state)  # saved with a worker, resumed without
        got += [next(in_process) for _ in range(3)]
        it.set_state(in_process.get_state())  # and back: the worker restarts at batch 6
        got += [next(it) for _ in range(3)]
    finally:
        it.close()
    assert state == {"batches_read": 3}
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_foreign_state_is_a_clear_error(prepared):
    it = pipeline.train_iterator(prepared, seq_len=T, batch_size=2, seed=5)
    with pytest.raises(DataError, match="is not a training-data state"):
        it.set_state({"next_index": 4})
    with pytest.raises(DataError, match="is not a training-data state"):
        it.set_state({"batches_read": -1})


def test_eval_batches_are_fixed_windows_of_the_validation_split(prepared):
    stream = np.asarray(prepared.tokens("val"), np.int32)
    for context in (T // 4, T // 2, T):
        a = pipeline.eval_batches(prepared, context=context, batch_size=4, num_batches=3)
        b = pipeline.eval_batches(prepared, context=context, batch_size=4, num_batches=3)
        assert a.context == context and len(a.batches) == 3 and a.tokens == 3 * 4 * context
        for x, y in zip(a.batches, b.batches, strict=True):
            assert x.shape == (4, context + 1) and x.dtype == np.int32
            np.testing.assert_array_equal(x, y)
        index = _window_index(stream, context + 1, context)
        starts = [index[row.tobytes()] for batch in a.batches for row in batch]
        assert len(set(starts)) == 12
        assert max(starts) > len(index) // 2  # spread over the split, not only its first documents


def test_eval_batches_split_across_processes(prepared):
    whole = pipeline.eval_batches(prepared, context=T, batch_size=2, num_batches=2, process_count=1)
    parts = [pipeline.eval_batches(prepared, context=T, batch_size=2, num_batches=2, process_index=p, process_count=2) for p in range(2)]
    assert parts[0].tokens == parts[1].tokens == 2 * 2 * 2 * T  # counted over both processes
    rows = lambda e: {r.tobytes() for b in e.batches for r in b}  # noqa: E731
    assert not rows(parts[0]) & rows(parts[1]) and len(rows(parts[0]) | rows(parts[1])) == 8
    assert whole.tokens == 2 * 2 * T


def test_eval_uses_fewer_batches_when_the_split_is_small(prepared):
    n = pipeline.num_windows(prepared.splits["val"].tokens, T + 1, T)
    e = pipeline.eval_batches(prepared, context=T, batch_size=4, num_batches=10**6)
    assert len(e.batches) == n // 4 and e.tokens == (n // 4) * 4 * T


def test_too_little_data_is_a_clear_error(prepared, tmp_path):
    too_long = prepared.splits["train"].tokens
    with pytest.raises(DataError, match=r"fewer than one per process .* lower seq_len"):
        pipeline.train_iterator(prepared, seq_len=too_long, batch_size=1, seed=0)
    with pytest.raises(DataError, match=r"validation split .* lower the evaluation batch or context"):
        pipeline.eval_batches(prepared, context=T, batch_size=10**6, num_batches=1)
    with pytest.raises(DataError, match=r"no prepared data at .*: run `python -m experiments.data prepare"):
        pipeline.train_iterator(tmp_path / "none", seq_len=T, batch_size=1, seed=0)
    with pytest.raises(DataError, match=r"process_index must be in \[0, process_count\)"):
        pipeline.train_iterator(prepared, seq_len=T, batch_size=1, seed=0, process_index=2, process_count=2)
