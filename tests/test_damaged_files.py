"""Damaged and foreign files in a run directory: every reader fails with one line, or not at all.

One real run directory is trained once (``pristine``). Each property test copies it, damages one
of its files (truncation, flipped bytes, an empty file; for CSVs a missing or extra column or
cell and wrong-typed cells; for JSON a wrong-typed value at any key path, a deleted or an extra
key; for npz a missing, replaced or foreign member) and runs, in-process, every reader of that
file: ``analysis.plots.load_run``, the views of ``scalelab.load``, the ``analysis.report``,
``analysis.plots`` and ``analysis.curvature`` commands and ``scale_grid --resume``. Each either
succeeds (the damage was harmless to it) or exits with status 1 or 2 and exactly one line on
stderr, no traceback, and every file the run held before the command unchanged. A library call
counts a ``ScalelabError`` as that one-line error; any other exception is a crash.

``SCALELAB_DAMAGE_EXAMPLES=N`` runs N examples per file instead of the few CI can afford.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from .conftest import write_idx_folder

TRAIN_FLAGS = ["--data", "idx", "--epochs", "2", "--seeds", "1", "--hidden", "4", "--inputs", "/1,/255",
               "--batch-size", "32", "--curvature-examples", "16", "--lanczos-steps", "4", "--density-probes", "1",
               "--density-steps", "4", "--no-progress", "--no-report"]  # fmt: skip
RUN_FILES = {
    "config.json", "metrics.csv", "curvature.csv", "spectrum.json", "summary.json", "status.json",
    "params/epoch_000.npz", "params/epoch_001.npz", "params/epoch_002.npz", "checkpoint.npz",
    "checkpoint.prev.npz", "chunks/chunk_000.npz",
}  # fmt: skip
# The writer lock names its holder (scalelab.locking): a resume that fails after taking it (a damaged
# chunks/ file) has rewritten it, as a lock must; it is not one of the files compared before and after.
NOT_COMPARED = {".lock"}


def examples(n: int) -> int:
    return int(os.environ.get("SCALELAB_DAMAGE_EXAMPLES", n))


def damage_settings(n: int):
    return settings(max_examples=examples(n), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished two-epoch run of two models with curvature, spectra, params and checkpoints."""
    from experiments import scale_grid

    root = tmp_path_factory.mktemp("damaged-files")
    data = write_idx_folder(root / "idx", num_train=64, num_test=32)
    run = root / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert scale_grid.main([*TRAIN_FLAGS, "--data-dir", str(data), "--out", str(run)]) == 0
    assert RUN_FILES <= {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    return run


# ---------------------------------------------------------------------------- mutations
#
# A mutation is a plain tuple (so hypothesis prints it as it is and it can be pasted into a test);
# indices are taken modulo the number of lines, cells, key paths or members of the file it damages,
# and a key path (a tuple) or a member's name may stand for the index (explicit examples).

INDEX = st.integers(0, 10_000)
BAD_CELLS = st.sampled_from(["abc", "[1, 2]", "", "nan", "-inf", "1e999", "-1", "0.5", "x,y"])
BAD_VALUES = st.sampled_from([None, "abc", 1.5, -1, 0, True, [], [1, 2], {}, {"x": 1}])
BAD_MEMBERS = st.sampled_from(["scalar", "vector", "text", "not-json", "matrix"])

BYTES = st.one_of(
    st.just(("empty",)),
    st.tuples(st.just("truncate"), INDEX),
    st.tuples(st.just("flip"), st.lists(st.tuples(INDEX, st.integers(1, 255)), min_size=1, max_size=4)),
)
CSV = st.one_of(
    BYTES,
    st.tuples(st.just("drop_column"), INDEX),
    st.tuples(st.just("add_column"), INDEX),
    st.tuples(st.just("drop_cell"), INDEX, INDEX),
    st.tuples(st.just("add_cell"), INDEX, INDEX, BAD_CELLS),
    st.tuples(st.just("set_cell"), INDEX, INDEX, BAD_CELLS),
)
JSON = st.one_of(
    BYTES,
    st.tuples(st.just("set"), INDEX, BAD_VALUES),
    st.tuples(st.just("delete"), INDEX),
    st.tuples(st.just("add_key"), INDEX),
)
NPZ = st.one_of(
    BYTES,
    st.just(("foreign",)),
    st.tuples(st.just("drop_member"), INDEX),
    st.tuples(st.just("replace_member"), INDEX, BAD_MEMBERS),
)


def pick(options: list, selector: Any) -> Any:
    """``options[selector % len(options)]`` for a drawn index; a named option (a key path, a member)
    as it is, so that an explicit example can say what it damages."""
    if isinstance(selector, int):
        return options[selector % len(options)]
    assert selector in options, f"{selector!r} is not one of {options}"
    return selector


def mutate_bytes(data: bytes, mutation: tuple) -> tuple[bytes, str]:
    kind = mutation[0]
    if kind == "empty":
        return b"", "emptied"
    if kind == "truncate":
        size = mutation[1] % max(len(data), 1)
        return data[:size], f"truncated to {size} of {len(data)} bytes"
    if kind == "flip":
        flipped = bytearray(data)
        for position, mask in mutation[1]:
            flipped[position % len(data)] ^= mask
        return bytes(flipped), f"bytes xor-ed at {sorted({p % len(data) for p, _ in mutation[1]})}"
    raise ValueError(mutation)


def mutate_csv(data: bytes, mutation: tuple) -> tuple[bytes, str]:
    if mutation[0] in ("empty", "truncate", "flip"):
        return mutate_bytes(data, mutation)
    lines = list(csv.reader(io.StringIO(data.decode(), newline="")))
    header = list(lines[0])
    kind, where = mutation[0], mutation[1]
    if kind == "drop_column":
        j = where % len(header)
        lines = [line[:j] + line[j + 1 :] for line in lines]
        what = f"column {header[j]!r} dropped"
    elif kind == "add_column":
        j = where % (len(header) + 1)
        lines = [line[:j] + ["extra" if i == 0 else "1"] + line[j:] for i, line in enumerate(lines)]
        what = f"column 'extra' added at {j}"
    else:
        i = where % len(lines)
        line = lines[i]
        j = mutation[2] % (len(line) + (kind == "add_cell"))
        column = header[j] if j < len(header) else "(end)"
        if kind == "drop_cell":
            lines[i] = line[:j] + line[j + 1 :]
            what = f"line {i + 1}: cell {column!r} dropped"
        elif kind == "add_cell":
            lines[i] = line[:j] + [mutation[3]] + line[j:]
            what = f"line {i + 1}: cell {mutation[3]!r} added before {column!r}"
        else:
            lines[i] = line[:j] + [mutation[3]] + line[j + 1 :]
            what = f"line {i + 1}: cell {column!r} set to {mutation[3]!r}"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue().encode(), what


def json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON value, itself (``()``) first."""
    paths = [prefix]
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in children:
        paths += json_paths(value, (*prefix, key))
    return paths


def mutate_json(data: bytes, mutation: tuple) -> tuple[bytes, str]:
    if mutation[0] in ("empty", "truncate", "flip"):
        return mutate_bytes(data, mutation)
    root = json.loads(data)
    kind, paths = mutation[0], json_paths(root)
    if kind == "set":
        path = pick(paths, mutation[1])
        assume(not same_scalar_type(value_at(root, path), mutation[2]))  # a wrong type, not a new value
        if not path:
            root = mutation[2]
        else:
            parent_of(root, path)[path[-1]] = mutation[2]
        what = f"{'.'.join(map(str, path)) or '(the whole file)'} set to {mutation[2]!r}"
    elif kind == "delete":
        path = pick(paths[1:], mutation[1])
        del parent_of(root, path)[path[-1]]
        what = f"{'.'.join(map(str, path))} deleted"
    else:
        tables = [p for p in paths if isinstance(value_at(root, p), dict)]
        path = pick(tables, mutation[1])
        value_at(root, path)["unexpected"] = 1
        what = f"key 'unexpected' added to {'.'.join(map(str, path)) or 'the top level'}"
    return (json.dumps(root, indent=2) + "\n").encode(), what


def same_scalar_type(old: Any, new: Any) -> bool:
    """True for two numbers, strings or booleans of one type (an int where a float was counts as one)."""
    scalar = (bool, int, float, str, type(None))
    if not isinstance(old, scalar) or not isinstance(new, scalar):
        return False
    return type(old) is type(new) or (type(old) is float and type(new) is int)


def value_at(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


def parent_of(root: Any, path: tuple) -> Any:
    return value_at(root, path[:-1])


def bad_member(kind: str) -> np.ndarray:
    return {
        "scalar": np.float32(1.5), "vector": np.arange(3.0), "text": np.array(["abc"]),
        "not-json": np.frombuffer(b"{not json", np.uint8), "matrix": np.zeros((2, 3), np.int64),
    }[kind]  # fmt: skip


def mutate_npz(data: bytes, mutation: tuple) -> tuple[bytes, str]:
    if mutation[0] in ("empty", "truncate", "flip"):
        return mutate_bytes(data, mutation)
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    names = sorted(arrays)
    if mutation[0] == "foreign":
        arrays, what = {"x": np.arange(4.0)}, "replaced by an npz of one foreign array 'x'"
    elif mutation[0] == "drop_member":
        name = pick(names, mutation[1])
        del arrays[name]
        what = f"member {name!r} removed"
    else:
        name = pick(names, mutation[1])
        arrays[name] = bad_member(mutation[2])
        what = f"member {name!r} replaced by a {mutation[2]} array"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue(), what


MUTATORS = {".csv": mutate_csv, ".json": mutate_json, ".npz": mutate_npz}


# ---------------------------------------------------------------------------- readers


class Outcome(NamedTuple):
    code: int
    err: str


def cli(main: Callable, *argv: str) -> Callable[[Path], Outcome]:
    """A command-line entry point, called in-process on the damaged run: (exit status, stderr)."""

    def call(run: Path) -> Outcome:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main([a.format(run=run) for a in argv])
            except SystemExit as stop:
                code = stop.code
        return Outcome(code, err.getvalue())

    return call


def api(read: Callable[[Path], Any]) -> Callable[[Path], Outcome]:
    """A library call: returning is status 0, a ScalelabError its one-line message and exit code."""
    from scalelab.errors import ScalelabError

    def call(run: Path) -> Outcome:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                read(run)
            except ScalelabError as error:
                print(f"error: {error}", file=err)
                return Outcome(error.exit_code, err.getvalue())
        return Outcome(0, err.getvalue())

    return call


def load_run(run: Path):
    from analysis import plots

    return plots.load_run(run)


def view(name: str, *args) -> Callable[[Path], Any]:
    def read(run: Path):
        import scalelab

        attribute = getattr(scalelab.load(run), name)
        return attribute(*args) if callable(attribute) else attribute

    return read


def report_main(argv):
    from analysis import report

    return report.main(argv)


def plots_main(argv):
    from analysis import plots

    return plots.main(argv)


def curvature_main(argv):
    from analysis import curvature

    return curvature.main(argv)


def scale_grid_main(argv):
    from experiments import scale_grid

    return scale_grid.main(argv)


class Reader(NamedTuple):
    name: str
    call: Callable[[Path], Outcome]
    writes: bool = False  # it writes into the run when it succeeds (figures, report, summary)


def curvature_cli(epoch: int) -> Reader:
    argv = ["--run", "{run}", "--epoch", str(epoch), "--model", "0", "--lanczos-steps", "4", "--top-k", "1"]
    return Reader(f"analysis.curvature --epoch {epoch}", cli(curvature_main, *argv))


LOAD_RUN = Reader("plots.load_run", api(load_run))
METRICS = Reader("load().metrics()", api(view("metrics")))
CURVATURE = Reader("load().curvature()", api(view("curvature")))
SUMMARY = Reader("load().summary()", api(view("summary")))
STATUS = Reader("load().status", api(view("status")))
REPORT = Reader("analysis.report", cli(report_main, "{run}"), writes=True)
PLOTS = Reader("analysis.plots", cli(plots_main, "{run}"), writes=True)
RESUME = Reader("scale_grid --resume", cli(scale_grid_main, "--resume", "{run}", "--no-progress"), writes=True)
FIGURE_READERS = [LOAD_RUN, REPORT, PLOTS]


def params_view(epoch: int) -> Reader:
    return Reader(f"load().params({epoch}, 0)", api(view("params", epoch, 0)))


def snapshot(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in NOT_COMPARED
    }


def check_readers(pristine: Path, name: str, mutation: tuple, readers: list[Reader], prepare=None) -> None:
    """Damages ``name`` in a copy of the run by ``mutation`` and holds every reader to the contract."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(pristine, run)
        if prepare is not None:
            prepare(run)
        target = run / name
        damaged, what = MUTATORS[target.suffix](target.read_bytes(), mutation)
        target.write_bytes(damaged)
        done = set()
        for reader in readers:
            if reader is PLOTS and REPORT.name in done:
                # analysis.plots does what analysis.report did first (load_run, build and save the
                # figures) on the same files: it cannot fail where the report just succeeded.
                continue
            before = snapshot(run)
            where = f"{reader.name} on {name} {what} (mutation {mutation!r})"
            try:
                code, err = reader.call(run)
            except Exception as crash:
                raise AssertionError(f"{where} crashed: {type(crash).__name__}: {crash}") from crash
            event(f"{reader.name}: exit {code}")  # --hypothesis-show-statistics: how much damage was harmless
            if code == 0:
                done.add(reader.name)
                if not reader.writes:
                    assert snapshot(run) == before, f"{where} succeeded but changed files of the run"
                continue
            assert code in (1, 2), f"{where} exited {code}: {err!r}"
            assert "Traceback" not in err, f"{where} printed a traceback: {err}"
            assert len(err.splitlines()) == 1, f"{where} printed {len(err.splitlines())} lines on stderr: {err!r}"
            after = snapshot(run)
            changed = sorted(p for p in before if after.get(p) != before[p])
            assert not changed, f"{where} failed ({err.strip()}) but changed {changed}"


# ---------------------------------------------------------------------------- one property per file
#
# Every test first tries an emptied file, then the damage it once failed on (the explicit examples
# that once crashed a reader, kept as regression cases), then what hypothesis draws.

EMPTY = ("empty",)


@damage_settings(4)
@example(mutation=EMPTY)
@example(mutation=("set", ("curvature", "examples"), 1.5))
@given(mutation=JSON)
def test_damaged_config_json(pristine, mutation):
    readers = [LOAD_RUN, METRICS, CURVATURE, SUMMARY, STATUS, params_view(1), curvature_cli(1), REPORT, PLOTS, RESUME]
    check_readers(pristine, "config.json", mutation, readers)


@damage_settings(8)
@example(mutation=EMPTY)
@given(mutation=CSV)
def test_damaged_metrics_csv(pristine, mutation):
    check_readers(pristine, "metrics.csv", mutation, [METRICS, *FIGURE_READERS])


@damage_settings(8)
@example(mutation=EMPTY)
@given(mutation=CSV)
def test_damaged_curvature_csv(pristine, mutation):
    check_readers(pristine, "curvature.csv", mutation, [CURVATURE, *FIGURE_READERS])


@damage_settings(3)
@example(mutation=EMPTY)
@example(mutation=("set", ("models", 0, "inputs"), None))
@example(mutation=("set", ("models", 0, "inputs"), []))
@example(mutation=("set", ("models", 0, "seed"), None))
@given(mutation=JSON)
def test_damaged_spectrum_json(pristine, mutation):
    check_readers(pristine, "spectrum.json", mutation, FIGURE_READERS)


@damage_settings(15)
@example(mutation=EMPTY)
@given(mutation=JSON)
def test_damaged_summary_json(pristine, mutation):
    check_readers(pristine, "summary.json", mutation, [SUMMARY])


@damage_settings(15)
@example(mutation=EMPTY)
@given(mutation=JSON)
def test_damaged_status_json(pristine, mutation):
    check_readers(pristine, "status.json", mutation, [STATUS])


@pytest.mark.parametrize("epoch", [0, 1, 2])
@damage_settings(4)
@example(mutation=EMPTY)
@example(mutation=("drop_member", "model_0/Dense_0/bias"))
@example(mutation=("drop_member", "model_0/Dense_0/kernel"))
@example(mutation=("replace_member", "model_0/Dense_0/bias", "text"))
@example(mutation=("replace_member", "model_0/Dense_0/bias", "scalar"))
@example(mutation=("replace_member", "model_0/Dense_0/kernel", "scalar"))
@example(mutation=("replace_member", "model_0/Dense_1/kernel", "matrix"))
@given(mutation=NPZ)
def test_damaged_params_npz(pristine, epoch, mutation):
    check_readers(pristine, f"params/epoch_{epoch:03d}.npz", mutation, [params_view(epoch), curvature_cli(epoch)])


@damage_settings(4)
@example(mutation=EMPTY)
@given(mutation=NPZ)
def test_damaged_checkpoint_npz(pristine, mutation):
    # A damaged newest checkpoint falls back to checkpoint.prev.npz, with a warning, and succeeds.
    check_readers(pristine, "checkpoint.npz", mutation, [RESUME])


def _damage_newest_checkpoint(run: Path) -> None:
    newest = run / "checkpoint.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])


@damage_settings(3)
@example(mutation=EMPTY)
@example(mutation=("drop_member", "leaf_00019"))
@example(mutation=("replace_member", "leaf_00000", "scalar"))
@example(mutation=("replace_member", "leaf_00000", "vector"))
@given(mutation=NPZ)
def test_damaged_previous_checkpoint_npz_behind_a_damaged_newest(pristine, mutation):
    # checkpoint.prev.npz is read only when checkpoint.npz is damaged: so it is, here, too.
    check_readers(pristine, "checkpoint.prev.npz", mutation, [RESUME], prepare=_damage_newest_checkpoint)


@damage_settings(10)
@example(mutation=EMPTY)
@given(mutation=NPZ)
def test_damaged_chunk_state_npz(pristine, mutation):
    check_readers(pristine, "chunks/chunk_000.npz", mutation, [RESUME])
