"""The grid sharded over devices: same numbers as on one device, really spread, padding dropped.

The multi-device checks train in a subprocess with 4 forced host devices (the device count is
fixed when JAX starts, and this process already has one); see ``tests/sharded_check.py``.
"""

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scalelab import sharding
from scalelab.errors import UsageError
from scalelab.results import RunDir
from scalelab.train import ModelStatus, TrainState
from tests.sharded_check import GRIDS

# Each device runs the vmapped epoch on its own block of models, and XLA blocks a batched matmul
# differently for a block of 1 model than for the reference's 3 x 3: observed 6e-8 apart on the
# parameters and 2.4e-7 (1 ulp) on the losses after 3 epochs, accuracies equal; not bit for bit.
SHARD_RTOL, SHARD_ATOL = 1e-5, 1e-7
NUM_DEVICES = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "seeds,variants,devices,mesh,padding",
    [
        (3, 2, 4, (4, 1), 2),  # pad one seed
        (1, 3, 4, (1, 4), 1),  # pad one variant
        (2, 3, 4, (2, 2), 2),  # (1, 4) pads as much; the seed axis wins the tie
        (8, 8, 4, (4, 1), 0),
        (6, 1, 4, (4, 1), 2),
        (1, 6, 4, (1, 4), 2),
        (1, 1, 4, (4, 1), 3),  # fewer models than devices: the spare devices hold padding
        (5, 7, 1, (1, 1), 0),
    ],
)
def test_plan_layout_examples(seeds, variants, devices, mesh, padding):
    layout = sharding.plan_layout(seeds, variants, devices)
    assert (layout.seed_shards, layout.variant_shards) == mesh
    assert layout.num_padding == padding


@pytest.mark.parametrize("devices", [1, 2, 3, 4, 6, 8])
def test_plan_layout_uses_every_device_and_pads_least(devices):
    for seeds, variants in itertools.product(range(1, 10), range(1, 10)):
        layout = sharding.plan_layout(seeds, variants, devices)
        assert layout.seed_shards * layout.variant_shards == devices
        assert layout.padded_seeds % layout.seed_shards == 0 and layout.padded_variants % layout.variant_shards == 0
        assert 0 <= layout.padded_seeds - seeds < layout.seed_shards
        assert 0 <= layout.padded_variants - variants < layout.variant_shards
        fewest = min(
            math.ceil(seeds / ds) * ds * math.ceil(variants / (devices // ds)) * (devices // ds)
            for ds in range(1, devices + 1)
            if devices % ds == 0
        )
        assert layout.padded_seeds * layout.padded_variants == fewest


def host_states(num_seeds, num_variants):
    """A TrainState of numpy arrays whose every entry names its model: 10 * s + v."""
    ids = 10.0 * np.arange(num_seeds)[:, None] + np.arange(num_variants)
    zeros = np.zeros((num_seeds, num_variants))
    status = ModelStatus(
        stopped=np.zeros((num_seeds, num_variants), bool), diverged=np.zeros((num_seeds, num_variants), bool),
        stop_epoch=zeros - 1, diverge_epoch=zeros - 1, best_loss=zeros + np.inf, bad_epochs=zeros,
    )  # fmt: skip
    params = {"kernel": np.broadcast_to(ids[..., None, None], (num_seeds, num_variants, 3, 2)).copy()}
    return TrainState(params=params, opt_state=(params,), step=ids, status=status)


@pytest.mark.parametrize(
    ("platform", "num_models", "used"),
    [("cpu", 1, 1), ("cpu", 3, 1), ("cpu", 4, 2), ("cpu", 7, 3), ("cpu", 8, 4), ("cpu", 500, 4), ("gpu", 1, 4),
     ("gpu", 500, 4), ("tpu", 3, 4)],
)  # fmt: skip
def test_grid_devices_gives_each_cpu_device_two_models_and_uses_every_accelerator(platform, num_models, used):
    devices = [SimpleNamespace(platform=platform, id=i) for i in range(4)]
    assert sharding.grid_devices(num_models, devices) == devices[:used]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "cores"), ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3), ({"JAX_NUM_CPU_DEVICES": "1"}, 1)],
)
def test_use_host_cores_gives_one_cpu_device_per_core_unless_a_count_is_chosen(environ, expected):
    code = "from scalelab import sharding; sharding.use_host_cores(); import jax; print(jax.device_count())"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env |= {"JAX_PLATFORMS": "cpu", **environ}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cores = len(os.sched_getaffinity(0))
    assert int(done.stdout.split()[-1]) == (cores if expected == "cores" else expected)


def test_curvature_of_a_grid_on_several_cpu_devices_is_measured_on_one():
    """jaxlib's CPU eigh can hang when two host devices run it at once (recording.measuring_placement)."""
    code = """
from types import SimpleNamespace
import jax, numpy as np
from scalelab import recording, sharding
mesh = sharding.make_mesh(sharding.plan_layout(2, 1, 2))
x = sharding.place(np.ones((2, 1, 3)), sharding.grid_shardings(mesh).states)
y = recording.measuring_placement(SimpleNamespace(program=SimpleNamespace(mesh=mesh)), x)
print(len(x.sharding.device_set), len(y.sharding.device_set), bool((np.asarray(y) == 1).all()))
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1", "True"]


def test_pad_states_freezes_only_the_padding_and_unpad_restores_the_grid():
    layout = sharding.GridLayout(num_seeds=3, num_variants=2, seed_shards=2, variant_shards=4)
    states = host_states(3, 2)
    padded = sharding.pad_states(states, layout)
    assert padded.params["kernel"].shape == (4, 4, 3, 2)
    expected_stopped = np.ones((4, 4), bool)
    expected_stopped[:3, :2] = False
    np.testing.assert_array_equal(padded.status.stopped, expected_stopped)
    np.testing.assert_array_equal(padded.step[3, :2], states.step[0])  # padded seed: a copy of seed 0
    np.testing.assert_array_equal(padded.step[:3, 2:], np.repeat(states.step[:, :1], 2, 1))  # of variant 0
    unpadded = sharding.unpad(padded, layout)
    for got, want in zip(unpadded, states, strict=True):
        np.testing.assert_equal(got, want)


def test_padded_variants_and_seeds_copy_the_first_real_one():
    layout = sharding.GridLayout(num_seeds=1, num_variants=3, seed_shards=2, variant_shards=2)
    lrs, keys = np.array([1e-3, 1e-2, 1e-1], np.float32), np.array([[7, 8]], np.uint32)
    np.testing.assert_array_equal(sharding.pad_hypers({"lr": lrs}, layout)["lr"], lrs[[0, 1, 2, 0]])
    np.testing.assert_array_equal(sharding.pad_seeds(keys, layout), [[7, 8], [7, 8]])


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, None),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
         {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, None),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5",
          "OMPI_COMM_WORLD_SIZE": "2"}, {}),  # JAX takes the count and id from mpirun
        ({"SLURM_JOB_ID": "5", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
          "SLURM_LOCALID": "0"}, {}),
        ({"SLURM_JOB_ID": "5", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
          "SLURM_LOCALID": "0"}, None),  # one task: nothing to join
        ({"SLURM_JOB_ID": "5", "SLURM_NTASKS": "4"}, None),  # an allocation, not a launched step
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5", "OMPI_COMM_WORLD_SIZE": "2"}, {}),
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ],
)  # fmt: skip
def test_distributed_args_follow_the_launcher(environ, expected):
    assert sharding.distributed_args(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
        {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
    ],
)
def test_an_incomplete_or_malformed_multi_host_environment_is_a_usage_error(environ):
    with pytest.raises(UsageError, match="JAX_COORDINATOR_ADDRESS|integer"):
        sharding.distributed_args(environ)


def test_one_host_does_not_initialise_the_distributed_system():
    assert sharding.maybe_initialize_distributed({}) is False


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """Runs ``tests/sharded_check.py`` once on 4 forced CPU devices; {(S, V): npz contents}."""
    out = tmp_path_factory.mktemp("sharded")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.sharded_check", str(out), *GRIDS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {}
    for spec in GRIDS:
        seeds, variants = map(int, spec.split(","))
        with np.load(out / f"{seeds}_{variants}.npz") as npz:
            runs[seeds, variants] = dict(npz)
    return runs


def grid_param(spec):
    return pytest.param(tuple(map(int, spec.split(","))), id=f"S{spec[0]}V{spec[2]}")


@pytest.mark.parametrize("grid", [grid_param(spec) for spec in GRIDS])
def test_sharded_grid_trains_every_model_as_one_device_does(sharded_runs, grid):
    run = sharded_runs[grid]
    plain = {key.removeprefix("plain/"): value for key, value in run.items() if key.startswith("plain/")}
    assert any(key.startswith("params") for key in plain)
    for key, want in plain.items():
        got = run[f"sharded/{key}"]
        assert got.shape == want.shape, key  # padded models dropped: (S, V) per epoch
        if want.dtype == bool or key.endswith("_acc"):
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, rtol=SHARD_RTOL, atol=SHARD_ATOL, err_msg=key)


@pytest.mark.parametrize("grid", [grid_param(spec) for spec in GRIDS])
def test_sharded_grid_is_spread_over_every_device_without_communication(sharded_runs, grid):
    facts = {key.removeprefix("facts/"): value for key, value in sharded_runs[grid].items() if key.startswith("facts/")}
    layout = sharding.plan_layout(*grid, NUM_DEVICES)
    block = (layout.padded_seeds // layout.seed_shards, layout.padded_variants // layout.variant_shards)
    assert facts["mesh"].tolist() == [layout.seed_shards, layout.variant_shards]
    assert facts["devices"] == NUM_DEVICES and facts["metric_devices"] == NUM_DEVICES
    np.testing.assert_array_equal(facts["shard_shapes"], [block] * NUM_DEVICES)
    assert facts["collectives"] == 0  # the models never talk: no all-gather, all-reduce, ...


@pytest.mark.parametrize("grid", [grid_param(spec) for spec in GRIDS])
def test_only_the_padded_models_are_frozen(sharded_runs, grid):
    stopped = sharded_runs[grid]["facts/padded_stopped"]
    seeds, variants = grid
    layout = sharding.plan_layout(seeds, variants, NUM_DEVICES)
    assert stopped.shape == (layout.padded_seeds, layout.padded_variants)
    assert not stopped[:seeds, :variants].any()
    assert stopped.sum() == layout.num_padding


def test_scale_grid_on_four_devices_writes_what_one_device_writes(idx_folder, tmp_path):
    """The whole job (training, curvature, checkpoints) sharded over 4 devices, 9 models (3 padded)."""
    flags = ["--data", "idx", "--data-dir", str(idx_folder), "--epochs", "2", "--seeds", "3", "--hidden", "8",
             "--batch-size", "32", "--inputs", "/1,/255,zscore", "--curvature-examples", "32", "--lanczos-steps", "4",
             "--no-report", "--no-progress"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    runs = {}
    for devices in (1, NUM_DEVICES):
        out = tmp_path / f"devices{devices}"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        subprocess.run([sys.executable, "-m", "experiments.scale_grid", *flags, "--out", str(out)],
                       check=True, cwd=ROOT, env=env, capture_output=True)  # fmt: skip
        runs[devices] = (RunDir(out).metrics(), RunDir(out).curvature())
    (one_rows, one_curv), (many_rows, many_curv) = runs[1], runs[NUM_DEVICES]
    assert len(one_rows) == len(many_rows) == 18 and len(one_curv) == len(many_curv) == 27
    for a, b in zip(one_rows, many_rows, strict=True):
        assert (a["model"], a["epoch"], a["inputs"]) == (b["model"], b["epoch"], b["inputs"])
        for key in ("train_loss", "test_loss", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    for a, b in zip(one_curv, many_curv, strict=True):
        assert (a["model"], a["step"]) == (b["model"], b["step"])
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["top_eig_1"], b["top_eig_1"], rtol=1e-3, atol=1e-6)
