"""Run-directory I/O: every write is atomic (temp file + fsync + rename), so a run killed at any
moment leaves either the previous complete file or the new one, never half of either.

A run directory holds ``config.json`` (the RunConfig, schema version 2), ``metrics.csv`` (one row
per model per epoch), ``curvature.csv`` (one row per model per measurement), ``spectrum.json``
(spectral densities at init), ``summary.json`` (final values per model and per setting),
``params/epoch_EEE.npz`` (every model's parameters after each epoch, 0 = init),
``checkpoint.npz`` (the whole grid state plus the rows so far, for ``--resume``), ``status.json``
and, once written, ``report.md``/``report.html`` and ``figures/``. The tables' columns and types
come from ``scalelab.schema`` (the grid's named axes); this module only moves them to and from files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.config import RunConfig
from scalelab.errors import ScalelabError, UsageError
from scalelab.measure import study_curvature_columns
from scalelab.schema import Axis, grid_axes, metric_columns, parse_curvature_value, parse_metrics_row


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so that readers see the old file or the new, never a mix."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ScalelabError(f"cannot write in {path.parent}: {err.strerror}; choose a writable --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ScalelabError(
            f"writing {path} failed ({err.strerror}); the previous version is intact — free space "
            "or choose another --out, then --resume"
        ) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScalelabError(f"{path} is missing; is {Path(path).parent} a scalelab run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScalelabError(f"{path} is not valid JSON ({err}); the run directory is damaged") from None


def rows_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, math.nan)) for k in columns})  # a shallower program: nan
    return out.getvalue()


def _header(path: Path) -> list[str]:
    """A CSV file's header (empty when it cannot be read: ``read_table`` then says why)."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_table(path: Path, columns: Sequence[str] | None = None) -> list[dict[str, str]]:
    """A CSV file's rows as text; ``columns``: the header it must have. Damage is a one-line error."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise ScalelabError(f"{path} is missing; is {Path(path).parent} a scalelab run directory?") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ScalelabError(f"{path} is not a readable CSV file ({err}); the run directory is damaged") from None
    if columns is not None and list(header) != list(columns):
        missing, extra = sorted(set(columns) - set(header)), sorted(set(header) - set(columns))
        detail = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "columns out of order"
        raise ScalelabError(f"{path}: its header does not match this run's schema ({detail}); the file is damaged")
    for number, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise ScalelabError(f"{path}: line {number} has {'more' if None in row else 'fewer'} cells than the header")
    return rows


def read_curvature(path: Path, axes: Sequence[Axis], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Reads curvature.csv with every cell typed (``schema.parse_curvature_value``)."""
    rows = read_table(path, columns)
    return [{k: parse_curvature_value(k, v, axes, str(path)) for k, v in row.items()} for row in rows]


def _csv_value(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip; nan/inf as 'nan'/'inf'
    return value


def read_metrics(path: Path, axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Reads metrics.csv back with numbers as numbers (``schema.parse_metrics_row``)."""
    parsed = []
    for number, row in enumerate(read_table(path, metric_columns(axes)), start=2):
        try:
            parsed.append(parse_metrics_row(row, axes))
        except (ValueError, TypeError) as err:
            raise ScalelabError(
                f"{path}: line {number} holds a value of the wrong type ({err}); the file is damaged"
            ) from None
    return parsed


class RunDir:
    """A run directory. ``create`` refuses to overwrite another run; ``open`` reads one back."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.warnings: list[str] = []  # what reading it found worth saying (a damaged newest checkpoint)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.npz")
    previous_checkpoint_path = property(lambda self: self.path / "checkpoint.prev.npz")
    status_path = property(lambda self: self.path / "status.json")
    curvature_path = property(lambda self: self.path / "curvature.csv")
    spectrum_path = property(lambda self: self.path / "spectrum.json")
    params_dir = property(lambda self: self.path / "params")

    @classmethod
    def create(cls, path: Path, config: RunConfig) -> RunDir:
        run = cls(path)
        if run.config_path.exists():
            raise ScalelabError(
                f"{run.path} already holds a run; continue it with --resume {run.path} or choose another --out"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ScalelabError(f"cannot create {run.path}: {err.strerror}; choose a writable --out") from None
        write_json(run.config_path, config.to_dict())
        run.write_status("running")
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise ScalelabError(f"{run.path} is not a directory; pass a run directory written by scale_grid")
        if not run.config_path.exists():
            raise ScalelabError(f"{run.path} is not a scalelab run directory (no config.json)")
        return run

    def config(self) -> RunConfig:
        raw = read_json(self.config_path)
        if not isinstance(raw, dict):
            raise ScalelabError(f"{self.config_path} holds {type(raw).__name__}, not a table; the file is damaged")
        try:
            return RunConfig.from_dict(raw, source=str(self.config_path))
        except UsageError as err:  # a damaged or foreign run directory is a runtime error, not a usage one
            raise ScalelabError(str(err)) from None

    @property
    def axes(self) -> tuple[Axis, ...]:
        return grid_axes(self.config())

    def write_status(self, state: str, **extra) -> None:
        write_json(self.status_path, {"state": state, **extra})

    def status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            return {"state": "unknown"}
        status = read_json(self.status_path)
        if not isinstance(status, dict) or not isinstance(status.get("state"), str):
            raise ScalelabError(f"{self.status_path} has no 'state'; the file is damaged")
        return status

    def write_metrics(self, rows: list[dict[str, Any]], axes: Sequence[Axis]) -> None:
        atomic_write_text(self.metrics_path, rows_csv(rows, metric_columns(axes)))

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            raise ScalelabError(f"{self.metrics_path} is missing; the run has not finished an epoch")
        return read_metrics(self.metrics_path, self.axes)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, _json_safe(summary))

    def write_curvature(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        atomic_write_text(self.curvature_path, rows_csv(rows, columns))

    def curvature(self) -> list[dict[str, Any]]:
        if not self.curvature_path.exists():
            raise ScalelabError(f"{self.curvature_path} is missing; the run recorded no curvature (--no-curvature?)")
        config = self.config()
        columns = study_curvature_columns(config)
        legacy = study_curvature_columns(config, trace=True)  # before trace-free runs dropped the NaN columns
        if legacy != columns and _header(self.curvature_path) == legacy:
            columns = legacy
        return read_curvature(self.curvature_path, grid_axes(config), columns)

    def summary(self) -> dict[str, Any]:
        if not self.summary_path.exists():
            raise ScalelabError(f"{self.summary_path} is missing; the run has not completed (see status.json)")
        summary = read_json(self.summary_path)
        if not isinstance(summary, dict) or not isinstance(summary.get("groups"), list):
            raise ScalelabError(f"{self.summary_path} has no 'groups' list; the file is damaged")
        return summary

    def spectrum(self) -> dict[str, Any]:
        """spectrum.json, checked: each model's SLQ ``nodes`` and ``weights``, (probes, steps) numbers."""
        spectrum = read_json(self.spectrum_path)
        models = spectrum.get("models") if isinstance(spectrum, dict) else None
        axes = self.axes
        if not isinstance(models, list) or not all(_spectrum_entry_ok(m, axes) for m in models):
            raise ScalelabError(f"{self.spectrum_path}: a model's nodes/weights are not equal-shaped lists of numbers")
        return spectrum

    def add_spectrum(self, entries: list[dict[str, Any]]) -> None:
        """Adds (or replaces) models' spectral densities in spectrum.json; chunks arrive one by one."""
        existing = read_json(self.spectrum_path)["models"] if self.spectrum_path.exists() else []
        new_ids = {e["model"] for e in entries}
        models = sorted([e for e in existing if e["model"] not in new_ids] + entries, key=lambda e: e["model"])
        write_json(self.spectrum_path, {"step": 0, "models": models})

    def params_path(self, epoch: int) -> Path:
        return self.params_dir / f"epoch_{epoch:03d}.npz"

    def save_params(self, epoch: int, per_model: dict[int, Any]) -> None:
        """Adds models' Flax params to ``params/epoch_EEE.npz`` as ``model_{m}/Dense_{i}/kernel`` etc."""
        path = self.params_path(epoch)
        arrays = {}
        if path.exists():
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
        for model, params in per_model.items():
            for layer, leaves in params["params"].items():
                for name, value in leaves.items():
                    arrays[f"model_{model}/{layer}/{name}"] = np.asarray(value)
        self.params_dir.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    def load_params(self, epoch: int, model: int) -> dict[str, Any]:
        try:
            return self._load_params(epoch, model)
        except ScalelabError:
            raise
        except Exception as err:  # zip, key and value errors all mean a damaged file here
            raise ScalelabError(f"{self.params_path(epoch)} is damaged ({type(err).__name__})") from None

    def _load_params(self, epoch: int, model: int) -> dict[str, Any]:
        """One model's Flax params at ``epoch`` (0 = init): ``{'params': {'Dense_0': {'kernel', 'bias'}, ...}}``."""
        path = self.params_path(epoch)
        if not path.exists():
            saved = sorted(int(p.stem.split("_")[1]) for p in self.params_dir.glob("epoch_*.npz"))
            raise ScalelabError(f"{path} is missing; this run saved params for epochs {saved or 'none'}")
        prefix = f"model_{model}/"
        layers: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path) as npz:
            for key in npz.files:
                if key.startswith(prefix):
                    layer, name = key[len(prefix) :].split("/")
                    layers.setdefault(layer, {})[name] = npz[key]
        if not layers:
            raise ScalelabError(f"{path} has no model {model}; see metrics.csv for the run's model numbers")
        check_flax_params(path, layers)
        return {"params": layers}

    def save_checkpoint(self, leaves: list[np.ndarray], meta: dict[str, Any]) -> None:
        """Saves the grid state's leaves and a JSON ``meta`` (position, rows so far) in one file.

        The previous checkpoint is kept as ``checkpoint.prev.npz``: if the newest is ever damaged,
        resume falls back to it (and redoes the epochs in between, bit for bit).
        """
        if self.checkpoint_path.exists():
            os.replace(self.checkpoint_path, self.previous_checkpoint_path)
        atomic_write_bytes(self.checkpoint_path, _npz_bytes(leaves, meta))

    def load_checkpoint(self) -> tuple[list[np.ndarray], dict[str, Any]] | None:
        """The newest readable checkpoint (leaves, meta); a fallback to the previous one adds to ``warnings``."""
        candidates = [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]
        damaged = []
        for path in candidates:
            try:
                loaded = _read_npz_state(path)
            except ScalelabError as err:
                damaged.append(str(err))
                continue
            if damaged:  # said by the caller once the run's checks pass, so a refusal stays one line
                self.warnings.append(f"warning: {damaged[0]}; resuming from {path.name}")
            return loaded
        if damaged:
            raise ScalelabError(
                f"{'; '.join(damaged)}; no readable checkpoint is left: delete them to restart the run from scratch"
            )
        return None

    def chunk_state_path(self, chunk: int) -> Path:
        return self.path / "chunks" / f"chunk_{chunk:03d}.npz"

    def save_chunk_state(self, chunk: int, leaves: list[np.ndarray], epochs: int) -> None:
        """A finished chunk's final state, so ``--resume --epochs N`` can train it on."""
        self.chunk_state_path(chunk).parent.mkdir(exist_ok=True)
        atomic_write_bytes(self.chunk_state_path(chunk), _npz_bytes(leaves, {"chunk": chunk, "epochs": epochs}))

    def load_chunk_state(self, chunk: int) -> tuple[list[np.ndarray], dict[str, Any]] | None:
        path = self.chunk_state_path(chunk)
        return _read_npz_state(path) if path.exists() else None


def _spectrum_entry_ok(entry, axes: Sequence[Axis]) -> bool:
    """A model's entry: its id, its value on every axis (of the axis' type), equal-shaped SLQ tables."""
    try:
        nodes, weights = np.asarray(entry["nodes"], float), np.asarray(entry["weights"], float)
        typed = all(_of_kind(entry[a.name], a.kind) for a in axes)
        return _of_kind(entry["model"], int) and typed and nodes.ndim == 2 and nodes.shape == weights.shape
    except (TypeError, ValueError, KeyError):
        return False


def _of_kind(value, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def check_flax_params(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """An MLP's layers as saved: Dense_0..Dense_L, each a 2-d float kernel and a bias to match, chained."""
    names = sorted(layers, key=lambda n: int(n.split("_")[1]) if n.startswith("Dense_") and n[6:].isdigit() else -1)
    if names != [f"Dense_{i}" for i in range(len(names))]:
        raise ScalelabError(f"{path}: layers {names} are not Dense_0..Dense_L; the file is damaged")
    width = None
    for name in names:
        kernel, bias = layers[name].get("kernel"), layers[name].get("bias")
        shapes_ok = (
            kernel is not None and bias is not None and kernel.ndim == 2 and bias.shape == kernel.shape[1:]
            and np.issubdtype(kernel.dtype, np.floating) and np.issubdtype(bias.dtype, np.floating)
            and (width is None or kernel.shape[0] == width)
        )  # fmt: skip
        if not shapes_ok:
            raise ScalelabError(f"{path}: {name}'s kernel and bias are missing or of the wrong shape or type")
        assert kernel is not None
        width = kernel.shape[1]


def _npz_bytes(leaves: list[np.ndarray], meta: dict[str, Any]) -> bytes:
    arrays = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the first ** as allow_pickle
    return buffer.getvalue()


def _read_npz_state(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    try:
        with np.load(path) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            count = len([k for k in npz.files if k.startswith("leaf_")])
            leaves = [npz[f"leaf_{i:05d}"] for i in range(count)]
        if not isinstance(meta, dict):
            raise TypeError("meta is not a table")
    except Exception as err:  # zip, JSON, key and type errors all mean the same thing here
        raise ScalelabError(f"{path} is damaged ({type(err).__name__})") from None
    return leaves, meta


def _json_safe(obj):
    """NaN/inf become null in summary.json (strict JSON), since browsers and jq reject NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj
