"""scalelab.compile_cache: where the persistent compilation cache lives, and study.run turning it on or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalelab import compile_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SCALELAB_CACHE_DIR": "/c/mine", "XDG_CACHE_HOME": "/x"}, "/c/mine"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/scalelab/jax"),
        ({"SCALELAB_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, str(Path.home() / ".cache/scalelab/jax")),
        ({}, str(Path.home() / ".cache/scalelab/jax")),
    ],
)
def test_the_cache_directory_is_the_env_var_else_the_user_cache_dir(environ, expected):
    assert compile_cache.default_dir(environ) == Path(expected)


def test_a_cache_directory_jax_was_given_is_kept(tmp_path):
    """The tests' per-checkout cache (conftest) is JAX's own setting: enable must not move it."""
    import jax

    before = jax.config.jax_compilation_cache_dir
    assert before, "conftest sets JAX_COMPILATION_CACHE_DIR"
    assert compile_cache.enable(tmp_path / "other") == Path(before)
    assert jax.config.jax_compilation_cache_dir == before and not (tmp_path / "other").exists()


STUDY = """
import dataclasses, json, sys
from pathlib import Path
import jax
from scalelab import study
from scalelab.config import CurvatureConfig, DataConfig, EngineConfig, GridConfig, ModelConfig, OutputConfig
from scalelab.config import RunConfig, TrainConfig
data, out, cache = sys.argv[1:]
config = RunConfig(
    data=DataConfig(name="idx", data_dir=data), model=ModelConfig(hidden=(8,)),
    train=TrainConfig(epochs=1, batch_size=32), grid=GridConfig(inputs=("/255",), seeds=1),
    curvature=CurvatureConfig(enabled=False), output=OutputConfig(report=False),
)
seen = {}
for on in (False, True):  # off first: once JAX has a cache directory it keeps it for the process
    engine = EngineConfig(compile_cache=on)
    study.run(dataclasses.replace(config, engine=engine), f"{out}/{on}", progress=False)
    seen[str(on)] = [jax.config.jax_compilation_cache_dir, Path(cache).exists()]
seen["entries"] = len(list(Path(cache).glob("*-cache")))
print(json.dumps(seen))
"""


def test_study_run_caches_in_scalelab_cache_dir_unless_the_engine_says_no(idx_folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"JAX_PLATFORMS": "cpu", "SCALELAB_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-c", STUDY, str(idx_folder), str(tmp_path / "runs"), str(tmp_path / "cache")]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["False"] == [None, False]  # --no-compile-cache: no directory set, nothing created
    assert seen["True"] == [str(tmp_path / "cache"), True]
    assert seen["entries"] >= 1  # the grid's epoch compiles for longer than MIN_COMPILE_TIME_S
