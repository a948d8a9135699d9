"""Grain pipelines over prepared token files: shuffled, per-host training batches with restorable state; fixed evaluation batches."""

from __future__ import annotations

import dataclasses
import pathlib

import grain
import numpy as np
from absl import flags

from experiments import data as data_lib
from experiments.errors import DataError


class Windows:
    """A grain source: window i is tokens[i*stride : i*stride + length] of one split, as int32.

    With length = T + 1 and stride = T, consecutive windows share one token, so each token of
    the stream (but the first and a tail shorter than T) is a prediction target once. Picklable (the memory map is
    reopened in each grain worker process, not copied into it).
    """

    def __init__(self, prepared: data_lib.Prepared, split: str, length: int, stride: int):
        self.prepared, self.split, self.length, self.stride = prepared, split, length, stride
        self.num_tokens = prepared.splits[split].tokens
        self._tokens = None

    def __len__(self) -> int:
        return num_windows(self.num_tokens, self.length, self.stride)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._tokens is None:
            self._tokens = self.prepared.tokens(self.split)
        start = int(i) * self.stride
        return np.asarray(self._tokens[start : start + self.length], dtype=np.int32)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


def num_windows(num_tokens: int, length: int, stride: int) -> int:
    """How many windows of `length` tokens at starts 0, stride, 2*stride, ... fit in the stream."""
    return 0 if num_tokens < length else (num_tokens - length) // stride + 1


def train_batches(
    data: data_lib.Prepared | str | pathlib.Path,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """This host's training batches, int32 [batch_size, seq_len + 1] (inputs [:, :-1], targets [:, 1:]),
    as a random-access grain dataset: batch k is computed from k alone.

    Each epoch is a fresh permutation of all windows of the train split (grain's index shuffle,
    seeded by `seed` and the epoch), cut to a multiple of process_count and dealt round-robin,
    so the hosts read disjoint windows, the same number each, and together every window but the
    under-process_count remainder. batch_size is this host's share of the global batch. Batches
    run across epoch boundaries; num_epochs=None repeats forever.
    """
    prepared = data if isinstance(data, data_lib.Prepared) else data_lib.open_prepared(data)
    _check_shard(process_index, process_count)
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"seq_len and batch_size must be positive, got seq_len={seq_len}, batch_size={batch_size}")
    if not 0 <= seed < 2**32:
        raise DataError(f"the data seed must be in [0, 2**32), got {seed}")
    windows = Windows(prepared, "train", seq_len + 1, seq_len)
    per_host = len(windows) // process_count
    if per_host == 0:
        raise DataError(f"the train split of {prepared.directory} has {windows.num_tokens:,} tokens: {len(windows)} windows of "
                        f"{seq_len + 1}, fewer than one per process ({process_count}); lower seq_len or prepare more text")
    ds = grain.MapDataset.source(windows).shuffle(seed=seed)
    ds = ds[: per_host * process_count][process_index::process_count]
    return ds.repeat(num_epochs).batch(batch_size, drop_remainder=True)


class TrainBatches:
    """An iterator over train_batches(...) whose state is the number of batches read: {"batches_read": k}.

    Resuming at batch k reads from k directly (the dataset is random access), with no replay. The
    state is the same on every host, does not depend on worker_count, and unlike grain's own
    iterator state (which grain only promises to read back with the same grain version) stays
    valid across grain upgrades. worker_count > 0 reads ahead in that many grain worker processes.
    """

    def __init__(self, batches: grain.MapDataset, *, worker_count: int = 0, worker_buffer_size: int = 2):
        if worker_count < 0:
            raise DataError(f"worker_count must be >= 0 (0 reads in this process), got {worker_count}")
        self._batches, self._workers, self._buffer = batches, worker_count, worker_buffer_size
        self.read = 0
        self._it = None

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> np.ndarray:
        if self._it is None:
            self._it = self._start(self.read)
        batch = next(self._it)  # StopIteration after the last of a finite number of epochs
        self.read += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"batches_read": self.read}

    def set_state(self, state: dict) -> None:
        try:
            read = int(state["batches_read"])
            if read < 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{state!r} is not a training-data state (expected {{'batches_read': N}}); "
                            "it comes from another data pipeline, so resume with the code that wrote it") from None
        self.close()
        self.read = read

    def close(self) -> None:
        """Stops grain's worker processes, if any; iterating again restarts them where it left off."""
        if self._it is not None:
            self._it.close()
            self._it = None

    def _start(self, first: int) -> grain.DatasetIterator:
        # Reading a window is a memory copy: two threads keep a few batches ready without GIL contention.
        ds = self._batches[first:].to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        if self._workers > 0:
            if not flags.FLAGS.is_parsed():
                # grain 0.2.18 reads one of its absl flags when it starts workers and fails if flags were
                # never parsed (scripts, tests); absl programs such as experiments.train parsed them already
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=self._buffer))
        return iter(ds)


def train_iterator(
    data: data_lib.Prepared | str | pathlib.Path, *, worker_count: int = 0, worker_buffer_size: int = 2, **kwargs
) -> TrainBatches:
    """TrainBatches(train_batches(data, **kwargs)): call .get_state() to checkpoint; .set_state(state) on an
    iterator built with the same arguments continues with exactly the same batches."""
    return TrainBatches(train_batches(data, **kwargs), worker_count=worker_count, worker_buffer_size=worker_buffer_size)


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Held-out batches at one context length: int32 [batch_size, context + 1] each."""

    context: int
    batches: list[np.ndarray]
    tokens: int  # predicted positions across all processes: len(batches) * batch_size * context * process_count


def eval_batches(
    data: data_lib.Prepared | str | pathlib.Path,
    *,
    context: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> EvalBatches:
    """The same validation windows at every call: up to num_batches batches per host, windows spread
    evenly over the whole validation stream (every held-out document contributes, not only the
    first ones), dealt round-robin to the hosts. Fewer batches when the split is small."""
    prepared = data if isinstance(data, data_lib.Prepared) else data_lib.open_prepared(data)
    _check_shard(process_index, process_count)
    windows = Windows(prepared, "val", context + 1, context)
    per_batch = batch_size * process_count
    usable = min(len(windows) // per_batch, num_batches) * per_batch
    if usable == 0:
        raise DataError(f"the validation split of {prepared.directory} has {windows.num_tokens:,} tokens: fewer than "
                        f"{per_batch} windows of {context + 1} (batch {batch_size} x {process_count} processes); "
                        "lower the evaluation batch or context, or prepare with a larger --val-fraction")
    chosen = np.arange(usable) * len(windows) // usable  # distinct since usable <= len(windows)
    mine = chosen[process_index::process_count]
    rows = np.stack([windows[i] for i in mine])
    batches = list(rows.reshape(-1, batch_size, context + 1))
    return EvalBatches(context=context, batches=batches, tokens=usable * context)


def _check_shard(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
