"""Start-up: the default study's first epoch with an empty persistent compilation cache and a full one.

A cold and a warm start need separate processes (JAX also keeps compiled programs in memory), so
``startup_bench`` runs the same two-epoch study twice in a child process, ``python -m
experiments.bench.startup CONFIG.json TIMES.json``, with ``$SCALELAB_CACHE_DIR`` pointing at one
fresh temporary directory: the first run fills it, the second reads it. The child trains as
``study.run`` does (``sharding.use_host_cores``, ``compile_cache.enable``, ``runner.run_grid``)
and stamps the wall clock after each epoch. Figures, from the parent's clock just before it starts
the child (the process start, imports included):

* ``first_epoch_s``: to the end of the first epoch (data, compiling, the measurement at init,
  the epoch and its measurement): what a user waits for before the first row;
* ``later_epoch_s``: the second epoch alone (train + measurement), the steady state;
* ``start_to_first_step_s``: ``first_epoch_s - later_epoch_s``, everything before the first
  training step (the later epoch does the same training and measuring work, compiled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.bench.timing import say

ROOT = Path(__file__).resolve().parents[2]
TARGET_WARM_OVER_COLD = 0.5
TARGET_WARM_START_S = 10.0
CHILD_TIMEOUT_S = 900


def startup_config(settings: dict, data: str, data_dir: str | None):
    """The default study (every default field) for two epochs on ``startup_train_limit`` examples,
    without report, params or checkpoints after the run: only training and its measurements."""
    from scalelab.config import DataConfig, OutputConfig, RunConfig, TrainConfig

    return RunConfig(
        data=DataConfig(name=data, data_dir=data_dir, train_limit=settings["startup_train_limit"]),
        train=TrainConfig(epochs=2),
        output=OutputConfig(report=False, save_params=False),
    )


def startup_bench(settings: dict, data: str, data_dir: str | None, config=None) -> dict:
    """Cold then warm start of the same study (``config``, default ``startup_config``); JSON ``startup``."""
    config = startup_config(settings, data, data_dir) if config is None else config
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-startup-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config.to_dict()))
        runs = {name: _child_run(Path(tmp), name) for name in ("cold", "warm")}
        entries = len(list((Path(tmp) / "cache").glob("*-cache")))
    cold, warm = runs["cold"], runs["warm"]
    return {
        "what": "the study (default: all defaults, 2 epochs) in a fresh process: empty compilation cache, then full",
        "models": config.num_models, "train_examples": settings["startup_train_limit"], "cache_entries": entries,
        "cold": cold, "warm": warm,
        "cold_first_epoch_s": cold["first_epoch_s"], "warm_first_epoch_s": warm["first_epoch_s"],
        "warm_over_cold": warm["first_epoch_s"] / cold["first_epoch_s"],
        "target_warm_over_cold": TARGET_WARM_OVER_COLD,
        "warm_start_to_first_step_s": warm["start_to_first_step_s"], "target_warm_start_s": TARGET_WARM_START_S,
        "met": warm["first_epoch_s"] <= TARGET_WARM_OVER_COLD * cold["first_epoch_s"]
        and warm["start_to_first_step_s"] < TARGET_WARM_START_S,
    }  # fmt: skip


def _child_run(tmp: Path, name: str) -> dict:
    """One child process on ``tmp``'s config and cache; its epoch times from the parent's start stamp."""
    say(f"startup: {name} start, a fresh process (cache: {'empty' if name == 'cold' else 'filled by the cold run'})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["SCALELAB_CACHE_DIR"] = str(tmp / "cache")
    times = tmp / f"{name}.json"
    argv = [sys.executable, "-m", "experiments.bench.startup", str(tmp / "config.json"), str(times), str(tmp / name)]
    started = time.time()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the {name} start-up run failed: {done.stderr.strip().splitlines()[-1:]}")
    epochs = [t - started for t in json.loads(times.read_text())["epoch_ends"]]
    first, later = epochs[0], epochs[1] - epochs[0]
    return {"first_epoch_s": first, "later_epoch_s": later, "start_to_first_step_s": first - later,
            "epoch_ends_s": epochs}  # fmt: skip


def child(config_path: str, times_path: str, out: str) -> None:
    """The child's study: as ``study.run`` trains it, stamping ``time.time()`` after every epoch."""
    from scalelab import compile_cache, runner
    from scalelab.config import RunConfig
    from scalelab.data import load_dataset
    from scalelab.results import RunDir
    from scalelab.sharding import use_host_cores

    use_host_cores()
    config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
    compile_cache.enable()
    stamps: list[float] = []
    dataset = load_dataset(config.data.name, config.data.data_dir)
    runner.run_grid(config, dataset, RunDir.create(Path(out), config), on_epoch=lambda *_: stamps.append(time.time()))
    Path(times_path).write_text(json.dumps({"epoch_ends": stamps, "cache_dir": str(compile_cache.enabled_dir())}))


if __name__ == "__main__":
    child(*sys.argv[1:4])
