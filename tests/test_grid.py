"""The vmapped grid: equal to per-model training, deterministic, independent of its neighbours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab import grid as grid_lib
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, RunConfig, TrainConfig
from scalelab.optim import OptimizerConfig
from scalelab.runner import plan_grid, run_grid

# vmapping changes how XLA blocks the matmuls, so per-model and grid results agree to float32
# rounding accumulated over a few dozen steps, not bit for bit.
GRID_RTOL, GRID_ATOL = 2e-4, 2e-5


def small_config(**grid_overrides) -> RunConfig:
    grid = dict(inputs=("/1", "/255", "zscore"), seeds=2, lrs=(1e-3,))
    grid.update(grid_overrides)
    return RunConfig(
        data=DataConfig(name="synthetic"),
        model=ModelConfig(hidden=(16,)),
        train=TrainConfig(epochs=2, batch_size=16),
        grid=GridConfig(**grid),
        curvature=CurvatureConfig(enabled=False),
    )


def train_subgrid(plan, seeds, variant_ids, epochs):
    """Trains the given seeds x variants of ``plan`` as their own grid; returns (params, metrics)."""
    init_keys, order_keys = grid_lib.seed_keys(seeds)
    hypers = jax.tree.map(lambda h: jnp.asarray(h[np.asarray(variant_ids)]), plan.hypers)
    state = grid_lib.init_grid(plan.program, init_keys, len(variant_ids), plan.data.train_x.shape[1])
    epoch_fn = jax.jit(grid_lib.train_epoch, static_argnums=0)
    data = jax.device_put(plan.data)
    history = []
    for epoch in range(epochs):
        state, metrics = epoch_fn(plan.program, state, hypers, data, order_keys, jnp.int32(epoch))
        history.append(metrics)
    return state.params, history


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_each_model_of_a_grid_of_16_trains_as_it_would_alone(tiny_dataset):
    plan = plan_grid(small_config(inputs=("/1", "/255", "zscore", "[-1,1]"), seeds=4), tiny_dataset)
    params, history = train_subgrid(plan, (0, 1, 2, 3), [0, 1, 2, 3], epochs=2)
    for s, seed, v in [(0, 0, 0), (3, 3, 2)]:  # two models alone: each costs a compile
        if True:
            alone_params, alone_history = train_subgrid(plan, (seed,), [v], epochs=2)
            assert_trees_close(
                jax.tree.map(lambda x, s=s, v=v: x[s, v], params), jax.tree.map(lambda x: x[0, 0], alone_params),
                rtol=GRID_RTOL, atol=GRID_ATOL,
            )  # fmt: skip
            for grid_m, alone_m in zip(history, alone_history, strict=True):
                np.testing.assert_allclose(grid_m.test_loss[s, v], alone_m.test_loss[0, 0], rtol=GRID_RTOL)
                np.testing.assert_allclose(grid_m.train_loss[s, v], alone_m.train_loss[0, 0], rtol=GRID_RTOL)


def test_variants_of_a_seed_share_initial_weights_and_seeds_differ(tiny_dataset):
    plan = plan_grid(small_config(), tiny_dataset)
    init_keys, _ = grid_lib.seed_keys((0, 1))
    state = grid_lib.init_grid(plan.program, init_keys, 3, plan.data.train_x.shape[1])
    kernel = np.asarray(state.params["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(kernel[0, 0], kernel[0, 2])
    assert not np.allclose(kernel[0, 0], kernel[1, 0])


def test_data_order_depends_only_on_seed_and_epoch_and_covers_every_example_once(tiny_dataset):
    plan = plan_grid(small_config(), tiny_dataset)
    _, order_keys = grid_lib.seed_keys((0, 1, 2))
    _, alone_keys = grid_lib.seed_keys((1,))
    order = np.asarray(grid_lib.epoch_order(plan.program, order_keys[1], 4, 200))
    np.testing.assert_array_equal(order, grid_lib.epoch_order(plan.program, alone_keys[0], 4, 200))
    weights = np.asarray(grid_lib._pad_weights(*order.shape, 200))
    assert order.shape == (13, 16) and weights.sum() == 200  # 200 = 12 full batches + 8
    np.testing.assert_array_equal(np.sort(order.reshape(-1)[weights.reshape(-1) > 0]), np.arange(200))
    assert not np.array_equal(order, grid_lib.epoch_order(plan.program, order_keys[1], 5, 200))


def test_same_config_and_seed_give_identical_numbers(tiny_dataset):
    _, first = run_grid(small_config(), tiny_dataset)
    _, second = run_grid(small_config(), tiny_dataset)
    assert first == second


def test_chunked_grid_gives_the_same_rows_as_one_program(tiny_dataset):
    _, whole = run_grid(small_config(), tiny_dataset)
    _, chunked = run_grid(small_config(), tiny_dataset, max_models_per_chunk=2)
    assert [(r["model"], r["epoch"]) for r in whole] == [(r["model"], r["epoch"]) for r in chunked]
    for a, b in zip(whole, chunked, strict=True):
        for key in ("train_loss", "test_loss", "test_acc", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=GRID_RTOL)


def test_a_diverging_learning_rate_is_flagged_and_leaves_the_others_untouched(tiny_dataset):
    # Exact cross-entropy: keras-ce's clip can zero every gradient at /1, and a model that
    # cannot move cannot diverge.
    sgd = dict(optimizer=OptimizerConfig(name="sgd"), train=TrainConfig(epochs=2, batch_size=16, loss="ce"))
    base = small_config(inputs=("/1", "/255"), lrs=(1e-2,))
    mixed = small_config(inputs=("/1", "/255"), lrs=(1e-2, 1e30))
    _, calm_rows = run_grid(RunConfig(**{**base.__dict__, **sgd}), tiny_dataset)
    _, mixed_rows = run_grid(RunConfig(**{**mixed.__dict__, **sgd}), tiny_dataset)
    wild = [r for r in mixed_rows if r["lr"] == 1e30]
    assert all(r["diverged"] for r in wild if r["epoch"] == 2)
    assert any(r["diverged"] and r["epoch"] == 1 for r in wild)
    calm_in_mixed = [r for r in mixed_rows if r["lr"] == 1e-2]
    for a, b in zip(calm_rows, calm_in_mixed, strict=True):
        assert (a["seed"], a["inputs"], a["epoch"]) == (b["seed"], b["inputs"], b["epoch"])
        # Bit for bit: the diverging members are masked, never mixed into the others' arithmetic.
        for key in ("train_loss", "test_loss", "test_acc", "grad_norm"):
            assert a[key] == b[key], (key, a, b)
        assert not b["diverged"]


@pytest.mark.parametrize("seeds,variants,limit", [(2, 3, 100), (4, 3, 6), (3, 5, 2), (2, 7, 3), (1, 1, 1)])
def test_chunks_cover_every_model_once_within_the_limit(seeds, variants, limit):
    chunks = grid_lib.split_chunks(seeds, variants, limit)
    seen = []
    for s, v in chunks:
        members = [(i, j) for i in range(seeds)[s] for j in range(variants)[v]]
        assert 0 < len(members) <= limit
        seen += members
    assert sorted(seen) == [(i, j) for i in range(seeds) for j in range(variants)]


def _count_scans(program, state, hypers, data, order_keys) -> int:
    jaxpr = jax.make_jaxpr(lambda s: grid_lib.train_epoch(program, s, hypers, data, order_keys, jnp.int32(0)))(state)
    return str(jaxpr).count("scan[")


def test_training_block_by_block_equals_all_models_at_once(tiny_dataset):
    config = small_config(inputs=("/1", "/255", "zscore"), seeds=4, lrs=(1e-3, 3e-3))  # (S, V) = (4, 6)
    init_keys, order_keys = grid_lib.seed_keys(tuple(range(4)))
    results, scans = {}, {}
    # One block; blocks of two seeds; blocks across seed boundaries, the last one filled up; single models.
    for models_per_block in (0, 12, 5, 1):
        plan = plan_grid(config, tiny_dataset, models_per_block=models_per_block)
        hypers, data = jax.device_put(plan.hypers), jax.device_put(plan.data)
        state = grid_lib.init_grid(plan.program, init_keys, 6, plan.data.train_x.shape[1])
        scans[models_per_block] = _count_scans(plan.program, state, hypers, data, order_keys)
        epoch_fn = jax.jit(grid_lib.train_epoch, static_argnums=0)
        history = []
        for epoch in range(2):
            state, metrics = epoch_fn(plan.program, state, hypers, data, order_keys, jnp.int32(epoch))
            history.append(metrics)
        results[models_per_block] = (state, history)
    # The blocked programs really do loop over blocks (lax.map is one more scan) ...
    assert scans[12] == scans[5] == scans[1] == scans[0] + 1
    # ... and every model ends where it ends when all train at once, to float32 rounding.
    whole_state, whole_history = results[0]
    for models_per_block in (12, 5, 1):
        state, history = results[models_per_block]
        assert_trees_close(state.params, whole_state.params, rtol=GRID_RTOL, atol=GRID_ATOL)
        assert_trees_close(state.opt_state, whole_state.opt_state, rtol=GRID_RTOL, atol=GRID_ATOL)
        assert np.array_equal(np.asarray(state.step), np.asarray(whole_state.step))
        assert_trees_close(history, whole_history, rtol=GRID_RTOL, atol=GRID_ATOL)


@pytest.mark.parametrize("num_models,requested,expected", [(21, 0, 21), (21, 2, 2), (1, 2, 1), (8, 8, 8), (8, 100, 8)])
def test_models_per_block_is_the_request_capped_at_the_grid(num_models, requested, expected):
    assert grid_lib.models_per_block(num_models, requested) == expected


def test_a_lone_cpu_blocks_models_to_its_cache_budget_and_an_explicit_block_wins(tiny_dataset):
    from scalelab.planning import CPU_BLOCK_BYTES

    if jax.device_count() > 1 or jax.devices()[0].platform != "cpu":
        pytest.skip("automatic blocks are for a lone CPU device")
    small, large = (
        plan_grid(RunConfig(**{**small_config().__dict__, "train": TrainConfig(epochs=1, batch_size=b)}), tiny_dataset)
        for b in (8, 64)
    )
    num_params = 64 * 16 + 16 + 16 * 10 + 10  # 8x8 synthetic images, hidden 16, 10 classes
    assert 1 <= large.program.models_per_block <= small.program.models_per_block
    assert small.program.models_per_block * 16 * num_params <= CPU_BLOCK_BYTES
    assert plan_grid(small_config(), tiny_dataset, models_per_block=0).program.models_per_block == 0
