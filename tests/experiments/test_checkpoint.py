"""Checkpoints: exact round trip of params, optimizer state and data state; retention; damaged latest falls back."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.checkpoint import Checkpointer, abstract_like


def _state(rng):
    params = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32), "layers": {0: {"b": jnp.asarray(rng.standard_normal(5), jnp.float32)}}}
    opt = optax.adamw(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.5, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return params, opt_state


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng()
    params, opt_state = _state(rng)
    data_state = {"next_index": int(rng.integers(1000)), "epoch": 2}
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(17, params, opt_state, data_state, wait=True)
    restored = Checkpointer(tmp_path / "ckpt").restore_latest(abstract_like(params), abstract_like(opt_state))
    assert restored.step == 17 and restored.data_state == data_state
    _assert_equal(restored.params, params)
    _assert_equal(restored.opt_state, opt_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(opt_state)


def test_retention_keeps_the_newest(tmp_path):
    params, opt_state = _state(np.random.default_rng())
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    for step in (1, 2, 3, 4):
        ckpt.save(step, params, opt_state, {"step": step})
    ckpt.close()
    assert Checkpointer(tmp_path / "ckpt").steps() == [3, 4]


def test_empty_directory_restores_nothing(tmp_path):
    params, opt_state = _state(np.random.default_rng())
    assert Checkpointer(tmp_path / "none").restore_latest(abstract_like(params), abstract_like(opt_state)) is None


def test_damaged_latest_falls_back_with_warning(tmp_path, caplog):
    rng = np.random.default_rng()
    ckpt = Checkpointer(tmp_path / "ckpt")
    old_params, old_opt = _state(rng)
    new_params, new_opt = _state(rng)
    ckpt.save(5, old_params, old_opt, {"at": 5}, wait=True)
    ckpt.save(9, new_params, new_opt, {"at": 9}, wait=True)
    ckpt.close()
    # damage every file of the newest checkpoint's parameters
    damaged = [p for p in (tmp_path / "ckpt" / "9" / "params").rglob("*") if p.is_file()]
    assert damaged
    for p in damaged:
        p.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        restored = Checkpointer(tmp_path / "ckpt").restore_latest(abstract_like(old_params), abstract_like(old_opt))
    assert restored.step == 5 and restored.data_state == {"at": 5}
    _assert_equal(restored.params, old_params)
    assert any("step 9" in r.message and "unreadable" in r.message for r in caplog.records)
