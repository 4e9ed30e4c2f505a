"""The bad-input catalogue: one table of wrong inputs, every entry point, one contract.

A wrong flag, config file, dataset, run directory or Python config gives ONE line on stderr,
``PROG: error: MESSAGE``, naming the problem and the fix; exit status 2 for usage errors
(``UsageError``), 1 for runtime errors (``ScalelabError``); never a traceback; and nothing is
written (no run directory appears, an existing run's files are unchanged). Through the Python API
(``scalelab.study.run`` and the config dataclasses) the same mistake raises the same exception
class with exactly the message the CLI prints.

``CASES`` is the table. ``docs/bad-input.md`` is rendered from it (``render_doc``; a test keeps
them equal): ``python -m tests.test_bad_input`` rewrites the page after the table changes.

Each case runs in its own folder, which is also the working directory: ``data/`` holds valid
synthetic IDX files (a case may damage them), ``run/`` a copy of a finished tiny run (cases with
``run=True``), and every path in a command is relative to it. Flag cases get their entry point's
tiny flags first (``TINY``), so a case is only the wrong part. Training is replaced by a stub
that fails the case (``TrainingStarted``): a bad input must be refused before any training.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import idx_bytes, write_idx_folder

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
CONFIG_FILE = "study.json"  # what an API case's config is written to for its CLI twin
SECTION_CLASSES = {
    "data": "DataConfig", "model": "ModelConfig", "optimizer": "OptimizerConfig", "train": "TrainConfig",
    "grid": "GridConfig", "curvature": "CurvatureConfig", "output": "OutputConfig", "engine": "EngineConfig",
}  # fmt: skip

# The tiny flags each entry point's flag cases start with (a case's own argv comes after and wins).
_GRID_TINY = ("--data", "idx", "--data-dir", "data", "--epochs", "1", "--hidden", "4",
              "--no-progress", "--no-report", "--out", "out")  # fmt: skip
TINY = {
    "scale_grid": _GRID_TINY,
    "keras_faq": _GRID_TINY,
    "preprocess_compare": _GRID_TINY,
    "curvature_vs_scale": _GRID_TINY,
    "lr_equivalence": ("--data", "idx", "--data-dir", "data", "--steps", "2", "--hidden", "4", "--out", "out"),
}
# An API case's config: these values with the case's own over them (config.json's layout).
TINY_CONFIG = {
    "data": {"name": "idx", "data_dir": "data"},
    "model": {"hidden": [4]},
    "train": {"epochs": 1},
    "output": {"report": False},
}
# The finished run that run=True cases get a copy of (built once per module).
RUN_FLAGS = ("--data", "idx", "--epochs", "1", "--hidden", "4", "--seeds", "1", "--inputs", "/255",
             "--batch-size", "8", "--curvature-examples", "16", "--lanczos-steps", "2",
             "--density-probes", "2", "--density-steps", "4", "--no-progress", "--no-report")  # fmt: skip


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # an ENTRY_POINTS name, or "study.run" (the Python API, with ``config``)
    argv: tuple[str, ...]  # after TINY[entry] when ``tiny``
    status: int  # exit status; for the API 2 = UsageError, 1 = another ScalelabError
    needle: str  # the message contains it
    what: str  # the input, in words (docs/bad-input.md)
    setup: Callable[[Path], None] | None = None  # prepares the case folder (damages data/ or run/, writes files)
    run: bool = False  # the case folder gets run/, a copy of a finished run
    tiny: bool = True
    config: dict[str, dict[str, Any]] | None = None  # study.run: the bad values (over TINY_CONFIG)
    out: str = "out"  # study.run: where the run would go
    env: dict[str, str] = field(default_factory=dict)
    train: bool = False  # let it reach the real training loop (a case whose error is raised there)
    xfail: str | None = None  # today's behaviour, where it breaks the contract (strict xfail)


# --- setups ---------------------------------------------------------------------------------------


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def edit(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / name
        path.write_bytes(change(path.read_bytes()))

    return setup


def edit_json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    return edit(name, lambda raw: json.dumps(change(json.loads(raw))).encode())


def edit_lines(name: str, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    return edit(name, lambda raw: ("\n".join(change(raw.decode().splitlines())) + "\n").encode())


def edit_idx(stem: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Changes the decompressed bytes of ``data/STEM.gz`` and compresses them again."""
    return edit(f"data/{stem}.gz", lambda raw: gzip.compress(change(gzip.decompress(raw))))


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        for one in setups:
            one(folder)

    return setup


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def make_dir(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).mkdir()


def with_key(section: str, key: str, value: Any) -> Callable[[Any], Any]:
    def change(raw):
        raw[section][key] = value
        return raw

    return change


def damage_cell(column: int, value: str) -> Callable[[list[str]], list[str]]:
    def change(lines):
        cells = lines[1].split(",")
        cells[column] = value
        return [lines[0], ",".join(cells), *lines[2:]]

    return change


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def labels(count: int, value: int = 0) -> bytes:
    return idx_bytes(np.full(count, value, np.uint8))


def swap_train_files(folder: Path) -> None:
    images, labels_ = folder / f"data/{TRAIN_IMAGES}.gz", folder / f"data/{TRAIN_LABELS}.gz"
    a, b = images.read_bytes(), labels_.read_bytes()
    images.write_bytes(b)
    labels_.write_bytes(a)


def other_test_shape(folder: Path) -> None:
    other = write_idx_folder(folder / "other", num_train=8, num_test=64, side=10)
    shutil.copy(other / f"{TEST_IMAGES}.gz", folder / f"data/{TEST_IMAGES}.gz")
    shutil.rmtree(other)


# --- the table ------------------------------------------------------------------------------------

SG, ANY = "scale_grid", "study.run"
# fmt: off
CASES: list[Case] = [
    # scale_grid flags
    Case("inputs-zero-divisor", SG, ("--inputs", "/0"), 2, "the divisor must be a finite number > 0; valid forms",
         "a divisor of 0"),
    Case("inputs-not-a-number", SG, ("--inputs", "/abc"), 2, "'abc' is not a number; valid forms",
         "a divisor that is not a number"),
    Case("inputs-unknown", SG, ("--inputs", "foo"), 2, "unknown input transform 'foo'; valid forms",
         "an unknown transform"),
    Case("inputs-repeated", SG, ("--inputs", "/255,/255"), 2, "--inputs lists /255 more than once; list each once",
         "a transform twice"),
    Case("inputs-empty-entry", SG, ("--inputs", "/255,"), 2, "has an empty entry", "a trailing comma"),
    Case("lr-zero", SG, ("--lr", "0"), 2, "every value must be a finite number > 0", "a learning rate of 0"),
    Case("lr-not-a-number", SG, ("--lr", "abc"), 2, "must be comma-separated numbers, e.g. 1e-3,1e-2",
         "a learning rate that is not a number"),
    Case("lr-negative-attached", SG, ("--lr=-1e-3",), 2, "every value must be a finite number > 0",
         "a negative learning rate, attached with `=`"),
    Case("lr-negative", SG, ("--lr", "-1e-3"), 2, "every value must be a finite number > 0",
         "a negative learning rate as its own word"),
    Case("lr-repeated", SG, ("--lr", "1e-3,1e-3"), 2, "more than once",
         "a learning rate twice (inputs and seeds refuse repeats)"),
    Case("hidden-zero", SG, ("--hidden", "0"), 2, "must be comma-separated whole numbers > 0, e.g. 128,128",
         "a hidden width of 0"),
    Case("hidden-not-a-number", SG, ("--hidden", "4,x"), 2, "must be comma-separated whole numbers > 0",
         "a hidden width that is not a number"),
    Case("activation-unknown", SG, ("--activation", "softmax"), 2,
         "unknown activation 'softmax'; choose one of relu, sigmoid, tanh, gelu, identity", "an unknown activation"),
    Case("loss-unknown", SG, ("--loss", "hinge"), 2, "unknown loss 'hinge'; choose one of", "an unknown loss"),
    Case("optimizer-unknown", SG, ("--optimizer", "lbfgs"), 2, "unknown optimizer 'lbfgs'; choose one of adam",
         "an unknown optimiser"),
    Case("init-unknown", SG, ("--init", "zeros"), 2, "unknown initialiser 'zeros'; choose one of glorot-uniform",
         "an unknown initialiser"),
    Case("epochs-zero", SG, ("--epochs", "0"), 2, "argument --epochs: '0' must be a whole number > 0",
         "zero epochs"),
    Case("epochs-fraction", SG, ("--epochs", "1.5"), 2, "argument --epochs: '1.5' is not a whole number",
         "a fractional epoch count"),
    Case("seeds-zero", SG, ("--seeds", "0"), 2, "argument --seeds: '0' must be a whole number > 0", "zero seeds"),
    Case("seed-list-repeated", SG, ("--seed-list", "3,3"), 2, "--seed-list repeats 3; list each seed once",
         "a seed twice"),
    Case("seed-list-backwards-range", SG, ("--seed-list", "5-2"), 2, "must be seeds >= 0 and ranges",
         "a range that runs backwards"),
    Case("seeds-and-seed-list", SG, ("--seeds", "2", "--seed-list", "1,2"), 2,
         "--seeds N and --seed-list S both choose the seeds; give one of them", "both ways of choosing seeds"),
    Case("batch-size-zero", SG, ("--batch-size", "0"), 2, "argument --batch-size: '0' must be a whole number > 0",
         "a batch size of 0"),
    Case("batch-size-above-data", SG, ("--batch-size", "1000"), 2,
         "--batch-size 1000 is larger than the 256 training examples; lower it or raise --train-limit",
         "a batch larger than the training split (256 examples)"),
    Case("batch-size-above-train-limit", SG, ("--train-limit", "16"), 2,
         "--batch-size 32 is larger than the 16 training examples", "a `--train-limit` below the batch size"),
    Case("train-limit-zero", SG, ("--train-limit", "0"), 2, "argument --train-limit: '0' must be a whole number > 0",
         "a training limit of 0"),
    Case("train-limit-above-data", SG, ("--train-limit", "1000"), 2,
         "--train-limit 1000 must be between 1 and 256 (the split's size)", "a training limit above the split"),
    Case("test-limit-above-data", SG, ("--test-limit", "999"), 2,
         "--test-limit 999 must be between 1 and 64 (the split's size)", "a test limit above the split"),
    Case("b1-one", SG, ("--b1", "1"), 2, "argument --b1: '1' must be a number in [0, 1)", "Adam's b1 = 1"),
    Case("b1-negative", SG, ("--b1=-0.1",), 2, "argument --b1: '-0.1' must be a number in [0, 1)",
         "a negative b1"),
    Case("b2-above-one", SG, ("--b2", "1.5"), 2, "argument --b2: '1.5' must be a number in [0, 1)", "b2 > 1"),
    Case("eps-zero", SG, ("--eps", "0"), 2, "argument --eps: '0': every value must be a finite number > 0", "eps = 0"),
    Case("weight-decay-negative", SG, ("--weight-decay=-1",), 2, "'-1': every value must be a finite number >= 0",
         "a negative weight decay"),
    Case("eps-axis-repeated", SG, ("--eps", "1e-7,1e-7"), 2, "--eps lists a value more than once; list each once",
         "an eps axis with a value twice"),
    Case("eps-axis-sgd", SG, ("--optimizer", "sgd", "--eps", "1e-7,1e-3"), 2,
         "sgd has no epsilon; an eps axis needs adam, adamw or rmsprop", "an eps axis for SGD"),
    Case("weight-decay-axis-adam", SG, ("--weight-decay", "0,1e-2"), 2,
         "adam has no weight decay; a weight-decay axis needs --optimizer adamw", "a weight-decay axis for Adam"),
    Case("patience-negative", SG, ("--patience=-1",), 2, "argument --patience: '-1' must be a whole number >= 0",
         "a negative patience"),
    Case("top-k-above-lanczos-steps", SG, ("--top-k", "5", "--lanczos-steps", "2"), 2,
         "--top-k 5 needs at least as many --lanczos-steps (now 2)", "more eigenvalues than Lanczos steps"),
    Case("trace-probes-one", SG, ("--trace-probes", "1"), 2, "--trace-probes 1 gives no standard error; use 0",
         "one Hutchinson probe"),
    Case("curvature-examples-zero", SG, ("--curvature-examples", "0"), 2, "'0' must be a whole number > 0",
         "curvature on 0 examples"),
    Case("checkpoint-every-zero", SG, ("--checkpoint-every", "0"), 2, "'0' must be a whole number > 0",
         "a checkpoint every 0 epochs"),
    Case("max-models-per-chunk-zero", SG, ("--max-models-per-chunk", "0"), 2, "'0' must be a whole number > 0",
         "chunks of 0 models"),
    Case("unknown-flag", SG, ("--bogus",), 2, "unrecognized arguments: --bogus (see --help)",
         "a flag that does not exist"),
    # scale_grid --config FILE
    Case("config-missing-file", SG, ("--config", "nope.toml"), 2,
         "--config nope.toml: cannot read it (No such file or directory); give a TOML or JSON file",
         "a config file that does not exist"),
    Case("config-is-a-folder", SG, ("--config", "cfg"), 2, "--config cfg: cannot read it (Is a directory)",
         "a folder given as the config file", setup=make_dir("cfg")),
    Case("config-bad-toml", SG, ("--config", "c.toml"), 2, "--config c.toml is not valid TOML (",
         "a TOML syntax error", setup=write("c.toml", "[grid\nseeds = 2\n")),
    Case("config-bad-json", SG, ("--config", "c.json"), 2, "--config c.json is not valid JSON (",
         "a JSON syntax error (trailing comma)", setup=write("c.json", '{"grid": {"seeds": 2,}}')),
    Case("config-empty-json", SG, ("--config", "c.json"), 2, "--config c.json is not valid JSON (",
         "an empty JSON file", setup=write("c.json", "")),
    Case("config-not-utf8", SG, ("--config", "c.toml"), 2, "--config c.toml",
         "a binary (not UTF-8) config file", setup=write("c.toml", b"\xff\xfe\x00garbage")),
    Case("config-not-a-table", SG, ("--config", "c.json"), 2, "must hold a table of sections (data, model, grid, ...)",
         "a JSON list instead of a table", setup=write("c.json", "[1, 2]")),
    Case("config-unknown-section", SG, ("--config", "c.toml"), 2,
         "unknown section 'gird'; sections are data, model, optimizer, train, grid", "a misspelt section",
         setup=write("c.toml", "[gird]\nseeds = 2\n")),
    Case("config-unknown-field", SG, ("--config", "c.toml"), 2, "grid: unknown field 'seed'; fields are inputs, seeds",
         "a misspelt field", setup=write("c.toml", "[grid]\nseed = 2\n")),
    Case("config-section-not-a-table", SG, ("--config", "c.toml"), 2, "section 'grid' must be a table of fields",
         "a section that is a number", setup=write("c.toml", "grid = 3\n")),
    Case("config-foreign-schema-version", SG, ("--config", "c.json"), 2,
         "has schema version 99, this scalelab reads versions 1, 2", "`schema_version` 99",
         setup=write("c.json", '{"schema_version": 99, "grid": {"seeds": 1}}')),
    Case("config-inputs-not-a-list", SG, ("--config", "c.toml"), 2, "inputs",
         "`inputs = 255` (a number, not a list of transforms)", setup=write("c.toml", "[grid]\ninputs = 255\n")),
    Case("config-hidden-a-string", SG, ("--config", "c.toml"), 2, "hidden",
         '`hidden = "128"` (a string, not a list of widths)', setup=write("c.toml", '[model]\nhidden = "128"\n')),
    Case("config-lrs-a-string", SG, ("--config", "c.toml"), 2, "lrs", '`lrs = "1e-3"` (a string, not a list)',
         setup=write("c.toml", '[grid]\nlrs = "1e-3"\n')),
    # the Python API and its CLI twin (scale_grid --config study.json)
    Case("api-epochs-zero", ANY, (), 2, "--epochs 0 must be a whole number >= 1", "zero epochs",
         config={"train": {"epochs": 0}}),
    Case("api-epochs-a-string", ANY, (), 2, "--epochs '3' must be a whole number >= 1", "epochs as a string",
         config={"train": {"epochs": "3"}}),
    Case("api-seeds-a-string", ANY, (), 2, "--seeds 'two' must be a whole number > 0", "seeds as a word",
         config={"grid": {"seeds": "two"}}),
    Case("api-seeds-a-bool", ANY, (), 2, "--seeds True must be a whole number > 0", "seeds = True",
         config={"grid": {"seeds": True}}),
    Case("api-train-limit-zero", ANY, (), 2, "--train-limit 0 must be a whole number > 0", "a training limit of 0",
         config={"data": {"train_limit": 0}}),
    Case("api-patience-negative", ANY, (), 2, "--patience -1 must be a whole number >= 0", "a negative patience",
         config={"train": {"patience": -1}}),
    Case("api-inputs-zero-divisor", ANY, (), 2, "input transform '/0': the divisor must be a finite number > 0",
         "a divisor of 0", config={"grid": {"inputs": ["/0"]}}),
    Case("api-inputs-not-a-list", ANY, (), 2, "inputs", "inputs = 255", config={"grid": {"inputs": 255}}),
    Case("api-lr-zero", ANY, (), 2, "--lr (grid.lrs) (0.0,): every value must be a finite number > 0",
         "a learning rate of 0",
         config={"grid": {"lrs": [0.0]}}),
    Case("api-seed-list-repeated", ANY, (), 2, "--seed-list repeats 3; list each seed once", "a seed twice",
         config={"grid": {"seed_list": [3, 3]}}),
    Case("api-hidden-zero", ANY, (), 2, "hidden widths (0,) must be positive integers", "a hidden width of 0",
         config={"model": {"hidden": [0]}}),
    Case("api-activation-unknown", ANY, (), 2, "unknown activation 'softmax'", "an unknown activation",
         config={"model": {"activation": "softmax"}}),
    Case("api-loss-unknown", ANY, (), 2, "unknown loss 'hinge'", "an unknown loss",
         config={"train": {"loss": "hinge"}}),
    Case("api-optimizer-unknown", ANY, (), 2, "unknown optimizer 'lbfgs'", "an unknown optimiser",
         config={"optimizer": {"name": "lbfgs"}}),
    Case("api-b1-one", ANY, (), 2, "must be a number in [0, 1)", "Adam's b1 = 1", config={"optimizer": {"b1": 1.0}}),
    Case("api-eps-zero", ANY, (), 2, "must be a finite number > 0", "eps = 0", config={"optimizer": {"eps": 0.0}}),
    Case("api-eps-axis-empty", ANY, (), 2, "--eps (): every value must be a finite number > 0, e.g. 1e-7,1e-3",
         "an empty eps axis", config={"grid": {"epsilons": []}}),
    Case("api-program-numeric-field", ANY, (), 2, "'grid.epsilons' is not a static field",
         "a program setting a field it cannot set",
         config={"grid": {"programs": [{"train.loss": "ce", "grid.epsilons": [1e-3]}]}}),
    Case("api-weight-decay-negative", ANY, (), 2, "must be a finite number >= 0", "a negative weight decay",
         config={"optimizer": {"name": "adamw", "weight_decay": -1.0}}),
    Case("api-top-k-above-lanczos-steps", ANY, (), 2, "--top-k 5 needs at least as many --lanczos-steps (now 2)",
         "more eigenvalues than Lanczos steps", config={"curvature": {"top_k": 5, "lanczos_steps": 2}}),
    Case("api-trace-probes-one", ANY, (), 2, "--trace-probes 1 gives no standard error", "one Hutchinson probe",
         config={"curvature": {"trace_probes": 1}}),
    Case("api-checkpoint-every-zero", ANY, (), 2, "--checkpoint-every 0", "a checkpoint every 0 epochs",
         config={"output": {"checkpoint_every": 0}}),
    Case("api-report-a-string", ANY, (), 2, "report", 'report = "no" (a string, not a bool)',
         config={"output": {"report": "no"}}),
    Case("api-max-models-per-chunk-zero", ANY, (), 2, "--max-models-per-chunk 0", "chunks of 0 models",
         config={"engine": {"max_models_per_chunk": 0}}),
    Case("api-models-per-block-negative", ANY, (), 2, "--models-per-block -1", "blocks of -1 models",
         config={"engine": {"models_per_block": -1}}),
    Case("api-batch-size-above-data", ANY, (), 2,
         "--batch-size 1000 is larger than the 256 training examples; lower it or raise --train-limit",
         "a batch larger than the data", config={"train": {"batch_size": 1000}}),
    Case("api-train-limit-above-data", ANY, (), 2, "--train-limit 1000 must be between 1 and 256",
         "a training limit above the split", config={"data": {"train_limit": 1000}}),
    Case("api-unknown-dataset", ANY, (), 2, "unknown dataset 'cifar': expected one of fashion_mnist, mnist, idx",
         "an unknown dataset name", config={"data": {"name": "cifar"}}),
    Case("api-dataset-name-a-number", ANY, (), 2, "unknown dataset 3", "a dataset name that is a number",
         config={"data": {"name": 3}}),
    Case("api-missing-data-dir", ANY, (), 1, "--data-dir nope: no such folder", "a data folder that does not exist",
         config={"data": {"data_dir": "nope"}}),
    Case("api-out-holds-a-run", ANY, (), 1, "run already holds a run; continue it with --resume run",
         "a run directory that already holds a run", config={}, out="run", run=True),
    # data
    Case("data-dir-missing", SG, ("--data-dir", "nope"), 1, "--data-dir nope: no such folder",
         "a `--data-dir` that does not exist"),
    Case("data-dir-is-a-file", SG, ("--data-dir", f"data/{TRAIN_IMAGES}.gz"), 1,
         "is a file, expected a folder of the four IDX files", "a file given as `--data-dir`"),
    Case("data-idx-without-dir", SG, ("--data", "idx", "--no-progress", "--out", "out"), 1,
         "--data idx reads IDX files from --data-dir DIR or $SCALELAB_DATA_DIR; set one",
         "`--data idx` without `--data-dir`", tiny=False),
    Case("data-env-dir-missing", SG, ("--data", "mnist"), 1, "$SCALELAB_DATA_DIR nope: no such folder",
         "`$SCALELAB_DATA_DIR` naming a missing folder", tiny=False, env={"SCALELAB_DATA_DIR": "nope"}),
    Case("data-unknown-name", SG, ("--data", "cifar"), 2, "unknown dataset 'cifar': expected one of",
         "an unknown dataset"),
    Case("data-tfds-without-name", SG, ("--data", "tfds:"), 2, "tfds: needs a dataset name, e.g. tfds:fashion_mnist",
         "`tfds:` without a name"),
    Case("data-tfds-unknown", SG, ("--data", "tfds:no_such_dataset", "--data-dir", "tfds"), 1,
         "tfds:no_such_dataset: unknown to TFDS", "a TFDS name that is not prepared"),
    Case("data-fashion-mnist-is-other-data", SG, ("--data", "fashion_mnist"), 1,
         "256 examples, expected 60000; if this is other IDX data, load it with --data idx",
         "synthetic IDX files read as Fashion-MNIST"),
    Case("data-lacks-a-file", SG, (), 1, f"--data-dir data: lacks {TRAIN_LABELS}[.gz]", "the labels file missing",
         setup=remove(f"data/{TRAIN_LABELS}.gz")),
    Case("data-truncated-gzip", SG, (), 1, "truncated or corrupted gzip", "a truncated .gz",
         setup=edit(f"data/{TRAIN_IMAGES}.gz", lambda raw: raw[:-20])),
    Case("data-empty-file", SG, (), 1, "is empty (0 bytes); copy the file again", "an empty labels file",
         setup=write(f"data/{TRAIN_LABELS}.gz", b"")),
    Case("data-garbled-magic", SG, (), 1, "bad magic number 0x12340803", "a garbled IDX header",
         setup=edit_idx(TRAIN_IMAGES, lambda raw: b"\x12\x34" + raw[2:])),
    Case("data-wrong-element-type", SG, (), 1, "IDX element type 0x0d", "IDX floats instead of bytes",
         setup=edit_idx(TRAIN_IMAGES, lambda raw: raw[:2] + b"\x0d" + raw[3:])),
    Case("data-header-too-short", SG, (), 1, "2 bytes, too short for an IDX header", "a 2-byte file",
         setup=write(f"data/{TRAIN_IMAGES}.gz", gzip.compress(b"\x00\x00"))),
    Case("data-truncated-payload", SG, (), 1, "(truncated); copy the file again", "an IDX payload 10 bytes short",
         setup=edit_idx(TRAIN_IMAGES, lambda raw: raw[:-10])),
    Case("data-images-and-labels-swapped", SG, (), 1, "are images and labels files swapped?",
         "the images and labels files swapped", setup=swap_train_files),
    Case("data-label-count", SG, (), 1, "10 labels for 256 images", "fewer labels than images",
         setup=write(f"data/{TRAIN_LABELS}.gz", gzip.compress(labels(10)))),
    Case("data-one-class", SG, (), 1, "every label is 0; classification needs at least two classes",
         "every label 0", setup=both(write(f"data/{TRAIN_LABELS}.gz", gzip.compress(labels(256))),
                                     write(f"data/{TEST_LABELS}.gz", gzip.compress(labels(64))))),
    Case("data-split-shapes-differ", SG, (), 1, "both splits must have one image shape",
         "8x8 training images, 10x10 test images", setup=other_test_shape),
    # run directories
    Case("resume-not-a-run", SG, ("--resume", "data"), 1, "data is not a scalelab run directory (no config.json)",
         "`--resume` of a folder that is not a run", tiny=False),
    Case("resume-missing", SG, ("--resume", "nope"), 1, "nope is not a directory; pass a run directory",
         "`--resume` of a missing folder", tiny=False),
    Case("resume-with-out-elsewhere", SG, ("--resume", "run", "--out", "other"), 2,
         "--resume RUN_DIR continues RUN_DIR in place; drop --out", "`--resume` with `--out` elsewhere",
         tiny=False, run=True),
    Case("resume-changed-flag", SG, ("--resume", "run", "--lr", "0.5", "--no-progress"), 2,
         "the command line differs from the run's config.json in grid.lrs; repeat the original flags",
         "`--resume` with another learning rate", tiny=False, run=True),
    Case("resume-changed-seeds", SG, ("--resume", "run", "--seeds", "2", "--no-progress"), 2,
         "differs from the run's config.json in grid.seeds", "`--resume` with another seed count",
         tiny=False, run=True),
    Case("resume-config-not-json", SG, ("--resume", "run"), 1, "run/config.json is not valid JSON (",
         "`--resume` of a run whose config.json is not JSON", tiny=False, run=True,
         setup=write("run/config.json", "{not json")),
    Case("resume-config-a-list", SG, ("--resume", "run"), 1, "run/config.json holds list, not a table",
         "`--resume` of a run whose config.json is a list", tiny=False, run=True,
         setup=write("run/config.json", "[1]")),
    Case("resume-config-unknown-field", SG, ("--resume", "run"), 1, "run/config.json: train: unknown field 'epochz'",
         "`--resume` of a run whose config.json has an unknown field", tiny=False, run=True,
         setup=edit_json("run/config.json", with_key("train", "epochz", 3))),
    Case("resume-foreign-schema-version", SG, ("--resume", "run"), 1, "has schema version 99",
         "`--resume` of a run of schema version 99", tiny=False, run=True,
         setup=edit_json("run/config.json", lambda raw: {**raw, "schema_version": 99})),
    Case("resume-damaged-checkpoint", SG, ("--resume", "run", "--epochs", "2", "--no-progress"), 1,
         "checkpoint.npz is damaged", "`--resume --epochs 2` of a run whose checkpoint.npz is damaged",
         tiny=False, run=True, train=True, setup=write("run/checkpoint.npz", b"junk")),
    Case("out-holds-a-run", SG, ("--out", "run"), 1, "run already holds a run; continue it with --resume run",
         "`--out` of an existing run", run=True),
    Case("out-under-a-file", SG, ("--out", "afile/run"), 1, "cannot create afile/run", "`--out` inside a file",
         setup=write("afile", "not a folder")),
    Case("report-missing-dir", "analysis.report", ("nope",), 1, "nope is not a directory", "a missing folder"),
    Case("report-not-a-run", "analysis.report", ("data",), 1, "data is not a scalelab run directory (no config.json)",
         "a folder that is not a run"),
    Case("report-metrics-header", "analysis.report", ("run",), 1, "metrics.csv: its header does not match",
         "metrics.csv with a foreign header", run=True, setup=write("run/metrics.csv", "model,seed\n0,0\n")),
    Case("report-metrics-extra-cell", "analysis.report", ("run",), 1, "metrics.csv: line 2 has more cells",
         "metrics.csv with an extra cell", run=True,
         setup=edit_lines("run/metrics.csv", lambda ls: [ls[0], ls[1] + ",9"])),
    Case("report-metrics-wrong-type", "analysis.report", ("run",), 1,
         "metrics.csv: line 2 holds a value of the wrong type", "metrics.csv with `abc` for a number", run=True,
         setup=edit_lines("run/metrics.csv", damage_cell(-3, "abc"))),
    Case("report-metrics-missing", "analysis.report", ("run",), 1, "metrics.csv is missing; the run has not finished",
         "metrics.csv deleted", run=True, setup=remove("run/metrics.csv")),
    Case("report-metrics-no-rows", "analysis.report", ("run",), 1, "has no rows yet; wait until the run has finished",
         "metrics.csv with its header only", run=True, setup=edit_lines("run/metrics.csv", lambda ls: ls[:1])),
    Case("report-curvature-header", "analysis.report", ("run",), 1, "curvature.csv: its header does not match",
         "curvature.csv with a foreign header", run=True, setup=write("run/curvature.csv", "step\n1\n")),
    Case("plots-curvature-short-row", "analysis.plots", ("run",), 1, "curvature.csv: line 2 has fewer cells",
         "curvature.csv with a short row", run=True, setup=edit_lines("run/curvature.csv", lambda ls: [ls[0], "0,0"])),
    Case("plots-metrics-not-utf8", "analysis.plots", ("run",), 1, "metrics.csv is not a readable CSV file",
         "metrics.csv that is binary", run=True, setup=write("run/metrics.csv", b"\xff\xfe\x00\x01")),
    Case("plots-spectrum-damaged", "analysis.plots", ("run",), 1,
         "spectrum.json: a model's nodes/weights are not equal-shaped lists", "spectrum.json of the wrong shape",
         run=True, setup=write("run/spectrum.json", '{"models": 3}')),
    Case("plots-no-run-dir", "analysis.plots", (), 2, "the following arguments are required: RUN_DIR", "no RUN_DIR"),
    Case("plots-unknown-flag", "analysis.plots", ("run", "--bogus"), 2, "unrecognized arguments: --bogus",
         "a flag that does not exist", run=True),
    Case("curvature-epoch-not-saved", "analysis.curvature", ("--run", "run", "--epoch", "7"), 1,
         "epoch_007.npz is missing; this run saved params for epochs [0, 1]", "an epoch the run did not save",
         run=True),
    Case("curvature-model-out-of-range", "analysis.curvature", ("--run", "run", "--epoch", "1", "--model", "5"), 2,
         "--model 5: the run has models 0..0", "a model the run does not have", run=True),
    Case("curvature-run-without-epoch", "analysis.curvature", ("--run", "run"), 2, "--run RUN_DIR needs --epoch E",
         "`--run` without `--epoch`", run=True),
    Case("curvature-epoch-negative", "analysis.curvature", ("--run", "run", "--epoch=-1"), 2,
         "argument --epoch: '-1' must be a whole number >= 0", "a negative epoch", run=True),
    Case("curvature-neither-source", "analysis.curvature", (), 2, "give either --params FILE.npz or --run RUN_DIR",
         "neither `--params` nor `--run`"),
    Case("curvature-both-sources", "analysis.curvature", ("--run", "run", "--epoch", "1", "--params", "p.npz"), 2,
         "give either --params FILE.npz or --run RUN_DIR", "both `--params` and `--run`", run=True),
    Case("curvature-examples-backwards", "analysis.curvature", ("--run", "run", "--epoch", "1", "--examples", "5:2"),
         2, "--examples '5:2' must be START:STOP with START < STOP", "an empty example range", run=True),
    Case("curvature-truncated-params", "analysis.curvature", ("--run", "run", "--epoch", "1", "--model", "0"), 1,
         "run/params/epoch_001.npz is damaged (BadZipFile)", "a truncated params npz", run=True,
         setup=edit("run/params/epoch_001.npz", lambda raw: raw[:100])),
    Case("curvature-params-missing", "analysis.curvature", ("--params", "nope.npz"), 1,
         "nope.npz not found; pass an .npz of Flax-layout MLP parameters", "a params file that does not exist"),
    Case("curvature-params-not-npz", "analysis.curvature", ("--params", "p.npz"), 1, "p.npz is not a readable .npz",
         "a params file that is not an npz", setup=write("p.npz", b"junk")),
    # the other experiments
    Case("keras-faq-seeds-zero", "keras_faq", ("--seeds", "0"), 2, "argument --seeds: '0' must be a whole number > 0",
         "zero seeds"),
    Case("keras-faq-activation-unknown", "keras_faq", ("--activation", "softmax"), 2, "unknown activation 'softmax'",
         "an unknown activation"),
    Case("keras-faq-batch-size-above-data", "keras_faq", ("--batch-size", "1000"), 2,
         "--batch-size 1000 is larger than the 256 training examples", "a batch larger than the data"),
    Case("keras-faq-out-holds-a-study", "keras_faq", ("--out", "run"), 2, "run already holds config.json; choose",
         "`--out` of a folder holding a study", run=True),
    Case("preprocess-compare-inputs", "preprocess_compare", ("--inputs", "/255"), 2,
         "under adam and sgd; drop --inputs", "`--inputs` (the experiment's own axis)"),
    Case("preprocess-compare-optimizer", "preprocess_compare", ("--optimizer", "sgd"), 2, "drop --optimizer",
         "`--optimizer` (the experiment's own axis)"),
    Case("preprocess-compare-config-missing", "preprocess_compare", ("--config", "nope.toml"), 2,
         "--config nope.toml: cannot read it", "a config file that does not exist"),
    Case("curvature-vs-scale-negative-exponent", "curvature_vs_scale", ("--max-exponent=-1",), 2,
         "--max-exponent -1.0 must be a finite number >= 0", "a negative `--max-exponent`"),
    Case("curvature-vs-scale-inputs", "curvature_vs_scale", ("--inputs", "/1"), 2,
         "this sweep's inputs are its divisors; set --divisors and --max-exponent", "`--inputs` (the sweep's axis)"),
    Case("curvature-vs-scale-divisors-zero", "curvature_vs_scale", ("--divisors", "0"), 2,
         "argument --divisors: '0' must be a whole number > 0", "zero divisors"),
    Case("curvature-vs-scale-exponent-nan", "curvature_vs_scale", ("--max-exponent", "nan"), 2, "--max-exponent nan",
         "`--max-exponent nan`"),
    Case("curvature-vs-scale-exponent-inf", "curvature_vs_scale", ("--max-exponent", "inf"), 2, "--max-exponent inf",
         "`--max-exponent inf`"),
    Case("lr-equivalence-scale-zero", "lr_equivalence", ("--scales", "0"), 2,
         "--scales entry '0' must be a finite number > 0", "a scale of 0"),
    Case("lr-equivalence-scale-not-a-number", "lr_equivalence", ("--scales", "abc"), 2,
         "--scales entry 'abc' is not a number or fraction, e.g. 255 or 1/255", "a scale that is not a number"),
    Case("lr-equivalence-scale-repeated", "lr_equivalence", ("--scales", "2,2"), 2,
         "lists a value twice; list each once", "a scale twice"),
    Case("lr-equivalence-variant-unknown", "lr_equivalence", ("--variants", "sgd-foo"), 2,
         "list each of sgd-exact, adam-exact, adam-same-eps at most once", "an unknown variant"),
    Case("lr-equivalence-base-zero-divisor", "lr_equivalence", ("--base", "/0"), 2,
         "input transform '/0': the divisor must be a finite number > 0", "a base transform /0"),
    Case("lr-equivalence-batch-size-above-data", "lr_equivalence", ("--batch-size", "1000"), 2,
         "--batch-size 1000 is larger than the 256 training examples", "a batch larger than the data"),
    Case("lr-equivalence-train-limit-above-data", "lr_equivalence", ("--train-limit", "1000"), 2,
         "--train-limit 1000 must be at most 256", "a training limit above the split"),
    Case("lr-equivalence-missing-data-dir", "lr_equivalence", ("--data-dir", "nope"), 1,
         "--data-dir nope: no such folder", "a `--data-dir` that does not exist"),
    Case("lr-equivalence-out-holds-a-run", "lr_equivalence", ("--out", "run"), 2, "run already holds a run; choose",
         "`--out` of an existing run", run=True),
]
# fmt: on

PARAMS = [
    pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [])
    for case in CASES
]


# --- running a case -------------------------------------------------------------------------------


def entry_points() -> dict[str, Callable[[list[str]], int]]:
    from analysis import curvature, plots, report
    from experiments import curvature_vs_scale, keras_faq, lr_equivalence, preprocess_compare, scale_grid

    return {
        "scale_grid": scale_grid.main, "keras_faq": keras_faq.main, "preprocess_compare": preprocess_compare.main,
        "curvature_vs_scale": curvature_vs_scale.main, "lr_equivalence": lr_equivalence.main,
        "analysis.report": report.main, "analysis.plots": plots.main, "analysis.curvature": curvature.main,
    }  # fmt: skip


def prog_of(entry: str) -> str:
    return "scale_grid" if entry == ANY else entry


def merged_config(case: Case) -> dict[str, dict[str, Any]]:
    out = {section: dict(values) for section, values in TINY_CONFIG.items()}
    for section, values in (case.config or {}).items():
        out.setdefault(section, {}).update(values)
    return out


def build_config(raw: dict[str, dict[str, Any]]):
    """The RunConfig a Python user writes for ``raw``: each section's dataclass, then RunConfig."""
    from scalelab import config
    from scalelab.optim import OptimizerConfig

    classes = {name: getattr(config, cls) for name, cls in SECTION_CLASSES.items() if name != "optimizer"}
    classes["optimizer"] = OptimizerConfig
    sections = {
        name: classes[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        for name, values in raw.items()
    }
    return config.RunConfig(**sections)


def argv_of(case: Case) -> list[str]:
    if case.entry == ANY:
        return ["--config", CONFIG_FILE, "--out", case.out, "--no-progress"]
    return [*(TINY.get(case.entry, ()) if case.tiny else ()), *case.argv]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder under ``folder``; a lock file's content (who held it) is left out."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() or p.name == ".lock" else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def changes(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> list[str]:
    return sorted(
        [f"+{k}" for k in after.keys() - before.keys()]
        + [f"-{k}" for k in before.keys() - after.keys()]
        + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    )


class TrainingStarted(AssertionError):
    """The bad input was accepted: training began."""


def run_cli(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except TrainingStarted:
        raise
    except Exception as err:  # what a user would see as a traceback
        pytest.fail(f"traceback: {type(err).__name__}: {err}\nstderr: {capsys.readouterr().err}")
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from experiments import scale_grid

    folder = tmp_path_factory.mktemp("bad-input-run")
    data = write_idx_folder(folder / "data")
    run = folder / "run"
    assert scale_grid.main([*RUN_FLAGS, "--data-dir", str(data), "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module", autouse=True)
def jax_started():
    """JAX's backend started before the first case, so no start-up warning lands in a case's stderr."""
    import jax

    jax.devices()


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys, request):
    write_idx_folder(tmp_path / "data")
    if case.run:
        shutil.copytree(request.getfixturevalue("finished_run"), tmp_path / "run")
    if case.entry == ANY:
        (tmp_path / CONFIG_FILE).write_text(json.dumps(merged_config(case)))
    if case.setup is not None:
        case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCALELAB_DATA_DIR", raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if not case.train:

        def no_training(*args, **kwargs):
            raise TrainingStarted(f"{case.id}: accepted, training started\nstderr: {capsys.readouterr().err}")

        monkeypatch.setattr("scalelab.runner.train_plan", no_training)
    main = entry_points()[prog_of(case.entry)]
    capsys.readouterr()
    before = snapshot(tmp_path)

    code, err = run_cli(main, argv_of(case), capsys)
    prefix = f"{prog_of(case.entry)}: error: "
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith(prefix), f"not one error line: {err!r}"
    assert "Traceback" not in err
    assert case.needle in err, f"{case.needle!r} not in {err!r}"
    assert code == case.status, f"exit status {code}, not {case.status}: {err!r}"
    assert changes(before, snapshot(tmp_path)) == [], "a wrong command wrote files"

    if case.entry == ANY:  # the same mistake from Python: the same class and the same message
        from scalelab import study
        from scalelab.errors import ScalelabError, UsageError

        with pytest.raises(ScalelabError) as raised:
            study.run(build_config(merged_config(case)), case.out, progress=False)
        assert isinstance(raised.value, UsageError) == (case.status == 2), type(raised.value).__name__
        assert str(raised.value) == err.removeprefix(prefix).removesuffix("\n")
        assert changes(before, snapshot(tmp_path)) == [], "a wrong study.run call wrote files"


# --- the page -------------------------------------------------------------------------------------


def _python_call(case: Case) -> str:
    def value(v):
        return repr(tuple(v)) if isinstance(v, list) else repr(v)

    sections = ", ".join(
        f"{section}={SECTION_CLASSES[section]}({', '.join(f'{k}={value(v)}' for k, v in values.items())})"
        for section, values in (case.config or {}).items()
    )
    out = f", {case.out!r}" if case.out != "out" else ""
    return f"study.run(RunConfig({sections}){out})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def render_doc() -> str:
    lines = [
        "# Bad input: what each entry point says",
        "",
        "Generated from `CASES` in `tests/test_bad_input.py`: `python -m tests.test_bad_input` rewrites this page",
        "and `test_doc_is_the_table` fails when the two differ. Every row is a test. The command exits with the",
        "status shown and prints exactly one line on stderr, `PROG: error: MESSAGE`, whose message contains the",
        "text in the last column; it shows no traceback and writes nothing (no run directory appears and an",
        "existing run's files keep their bytes; only `.lock`'s record of who last held the lock is not compared).",
        "Status 2 is a usage error (`scalelab.errors.UsageError`: a bad flag value, config file or combination",
        "of flags), 1 a runtime error (`ScalelabError`: missing or damaged data, a bad or foreign run directory).",
        "`--debug` shows the traceback instead.",
        "",
        "Each case runs in a fresh folder, its working directory, holding `data/` (valid synthetic IDX files:",
        "256 training and 64 test images of 8x8 pixels) and, where a row names it, `run/` (a finished one-epoch",
        "run of that data). Rows of `scale_grid`, `keras_faq`, `preprocess_compare` and `curvature_vs_scale`",
        "run after these flags, so a row shows only the wrong part (rows marked *alone* run without them):",
        "",
        f"    {' '.join(_GRID_TINY)}",
        "",
        "and `lr_equivalence` rows after",
        "",
        f"    {' '.join(TINY['lr_equivalence'])}",
        "",
        "`study.run` rows are the Python API: the config, built from the dataclasses shown (over a tiny config",
        "of the same data), raises `UsageError` (status 2) or another `ScalelabError` (status 1) whose message",
        f"is exactly the line `scale_grid --config {CONFIG_FILE}` prints for the same values. Rows marked",
        "**known gap** do not meet the contract yet (their tests are strict `xfail`s) and say what happens today.",
        "",
        "| entry point | input | exit status | what the message says |",
        "| --- | --- | --- | --- |",
    ]
    for case in CASES:
        shown = _python_call(case) if case.entry == ANY else " ".join(case.argv)
        env = " ".join(f"{k}={v}" for k, v in case.env.items())
        where = _code(f"{env} {shown}".strip()) if (shown or env) else ""
        what = f"{case.what}: {where}" if where else case.what
        if not case.tiny and case.entry in TINY:
            what += " *alone*"
        says = f"contains {_code(case.needle)}"
        if case.xfail:
            says = f"**known gap**: should contain {_code(case.needle)}; today {case.xfail}"
        lines.append(f"| `{case.entry}` | {_cell(what)} | {case.status} | {_cell(says)} |")
    return "\n".join(lines) + "\n"


def test_doc_is_the_table():
    assert DOC.read_text() == render_doc(), "docs/bad-input.md is stale: python -m tests.test_bad_input"


def test_the_table_is_a_catalogue():
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
    assert {c.status for c in CASES} == {1, 2}
    assert set(entry_points()) | {ANY} == {c.entry for c in CASES}


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc())
    print(f"{DOC}: {len(CASES)} cases", file=sys.stderr)
