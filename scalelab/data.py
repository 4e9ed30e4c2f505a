"""Datasets as uint8 arrays: IDX files (Fashion-MNIST, MNIST, any folder of IDX) or TFDS.

Everything read is validated here, at the boundary, and every problem is one ``DataError``
whose one-line message names the file (or folder) and, where one exists, the fix. The rest of
scalelab assumes a valid ``Dataset``.

IDX (LeCun et al. 1998, http://yann.lecun.com/exdb/mnist/) is a big-endian header -- magic
``0x0000 08 <ndim>`` (``0x08`` = unsigned byte), then ``ndim`` 32-bit dimensions -- followed by
the raw bytes in C order. A split is two files, ``<prefix>-images-idx3-ubyte`` and
``<prefix>-labels-idx1-ubyte`` with ``prefix`` = ``train`` or ``t10k``, each plain or gzip.

Names understood by ``load_dataset``:

- ``fashion_mnist`` (Xiao et al. 2017) and ``mnist``: the four IDX files, found by
  ``resolve_idx_dir``; counts and shapes checked (60000/10000, 28x28), and for Fashion-MNIST the
  SHA-256 of each decompressed file.
- ``idx``: any folder of the four IDX files (``data_dir`` or ``$SCALELAB_DATA_DIR``); structure
  checked, no fixed counts or checksums; ``num_classes`` = largest label + 1.
- ``tfds:NAME``: any TFDS image-classification dataset already prepared on disk, read with
  ``tensorflow_datasets.data_source`` (no TensorFlow, never a download).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.errors import DataError, UsageError

ENV_VAR = "SCALELAB_DATA_DIR"
# Where Debian's dataset-* packages install (e.g. dataset-fashion-mnist).
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
# Project-local copies: relative to the working directory first, then to the repository root.
LOCAL_DATA_ROOTS: tuple[Path, ...] = (Path("data"), Path(__file__).resolve().parent.parent / "data")

SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
IMAGE_NDIMS = (3, 4)  # (N, H, W) or (N, H, W, C)
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_TFDS_BATCH = 4096  # records per __getitems__ call: amortises the per-call overhead
_TFDS_OPEN_ERRORS = (NotImplementedError, ValueError, KeyError, OSError, AssertionError)


@dataclass(frozen=True)
class Dataset:
    """A classification dataset as uint8 images and int32 labels, train and test.

    Images are ``(N, H, W)`` or ``(N, H, W, C)``; labels are ``(N,)`` in ``0..num_classes-1``.
    ``source`` says where it was read from: a folder path, or ``tfds:<name>``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str


@dataclass(frozen=True)
class IdxSpec:
    """What a known IDX dataset must look like, and where its files are usually found."""

    title: str  # for messages, e.g. "Fashion-MNIST"
    folder: str  # folder name under the data roots, e.g. "fashion-mnist"
    package: str | None  # Debian package that installs it, if any
    num_train: int
    num_test: int
    image_shape: tuple[int, ...]
    num_classes: int
    sha256: Mapping[str, str] = field(default_factory=dict)  # by file stem; empty: not checked


# SHA-256 of the decompressed official files (github.com/zalandoresearch/fashion-mnist).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
KNOWN_IDX: dict[str, IdxSpec] = {
    "fashion_mnist": IdxSpec(
        title="Fashion-MNIST", folder="fashion-mnist", package="dataset-fashion-mnist",
        num_train=60000, num_test=10000, image_shape=(28, 28), num_classes=10,
        sha256=FASHION_MNIST_SHA256,
    ),
    "mnist": IdxSpec(
        title="MNIST", folder="mnist", package=None,
        num_train=60000, num_test=10000, image_shape=(28, 28), num_classes=10,
    ),
}  # fmt: skip
KNOWN_NAMES = (*KNOWN_IDX, "idx", "tfds:NAME")


# --- one IDX file -------------------------------------------------------------------------------


def idx_stems(prefix: str) -> tuple[str, str]:
    """The file names (without ``.gz``) of a split's images and labels, e.g. for ``t10k``."""
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_file(folder: str | os.PathLike, stem: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem``, whichever exists (gzip first, as distributed)."""
    folder = Path(folder)
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder / stem}[.gz]: missing; the folder must hold the four IDX files")


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The IDX bytes of ``path``, decompressed when it starts with the gzip magic ``1f 8b``."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an IDX file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not raw:
        raise DataError(f"{path}: is empty (0 bytes); copy the file again")
    # Detect by content, not suffix: a renamed or decompressed-in-place file still reads.
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, zlib.error, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{path}: truncated or corrupted gzip ({type(err).__name__}: {err}); download or copy it again"
        ) from err


def parse_idx(data: bytes, path: str | os.PathLike, ndims: Collection[int] = ()) -> np.ndarray:
    """The uint8 array held by the IDX bytes ``data`` (read from ``path``, named in errors).

    ``ndims``, if given, lists the allowed numbers of dimensions (magic ``0x0000080<ndim>``).
    The header must account for every byte: a short or long file is an error, not a reshape.
    """
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header; copy it again")
    zeros, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    expected = " or ".join(f"0x{0x800 + n:08x}" for n in ndims) or "0x000008NN"
    if zeros != 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, expected {expected} (not IDX)")
    if dtype_code != _IDX_UBYTE:
        raise DataError(
            f"{path}: IDX element type 0x{dtype_code:02x} (magic 0x{magic:08x}), "
            f"expected 0x08 unsigned byte (magic {expected})"
        )
    if ndim == 0 or (ndims and ndim not in ndims):
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} ({ndim} dimensions), expected {expected}; "
            "are images and labels files swapped?"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: header truncated ({len(data)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    return _array_from_payload(data, header_len, dims, path)


def _array_from_payload(data: bytes, offset: int, dims: tuple[int, ...], path) -> np.ndarray:
    """The payload after the header as an array of shape ``dims``, if its length matches."""
    expected = math.prod(dims)  # Python ints: a hostile header cannot overflow
    actual = len(data) - offset
    if actual != expected:
        shape = "x".join(map(str, dims))
        what = "truncated" if actual < expected else f"{actual - expected} extra bytes"
        raise DataError(
            f"{path}: {actual} data bytes but the header ({shape}) says {expected} ({what}); copy the file again"
        )
    # frombuffer is a zero-copy view of read-only bytes; copy once so callers get a normal array.
    return np.frombuffer(data, np.uint8, count=expected, offset=offset).reshape(dims).copy()


def read_idx(path: str | os.PathLike, ndims: Collection[int] = ()) -> np.ndarray:
    """The uint8 array in one IDX file, gzip or plain, with header, dims and length validated."""
    return parse_idx(read_idx_bytes(path), path, ndims)


def verify_sha256(data: bytes, path: str | os.PathLike, expected: str, title: str) -> None:
    """Raises ``DataError`` unless the SHA-256 of the decompressed ``data`` is ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: SHA-256 of the decompressed bytes is {actual}, not that of the official "
            f"{title} file ({expected}); if this data is intentional, load it with --data idx "
            "(verify_checksums=False in Python)"
        )


# --- a split and a folder -----------------------------------------------------------------------


def read_idx_split(
    folder: str | os.PathLike,
    prefix: str,
    *,
    expected_count: int | None = None,
    image_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    checksums: Mapping[str, str] | None = None,
    title: str = "dataset",
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split (``prefix`` = ``train`` or ``t10k``) in ``folder``.

    Images are ``(N, H, W[, C])`` uint8, labels ``(N,)`` int32. ``expected_count``,
    ``image_shape`` (``(H, W)``) and labels in ``0..num_classes-1`` are checked when given;
    ``checksums`` maps file stems to the SHA-256 of the decompressed bytes, checked after the
    structure so that a truncated file is reported as truncated rather than as a mismatch.
    """
    images_stem, labels_stem = idx_stems(prefix)
    images_path = find_idx_file(folder, images_stem)
    labels_path = find_idx_file(folder, labels_stem)
    images_bytes = read_idx_bytes(images_path)
    labels_bytes = read_idx_bytes(labels_path)
    images = parse_idx(images_bytes, images_path, IMAGE_NDIMS)
    labels = parse_idx(labels_bytes, labels_path, (1,))
    _check_split(images, labels, images_path, labels_path, expected_count, image_shape)
    if num_classes is not None:
        _check_label_range(labels_path, labels, num_classes)
    checksums = checksums or {}
    for stem, path, data in [(images_stem, images_path, images_bytes),
                             (labels_stem, labels_path, labels_bytes)]:  # fmt: skip
        if stem in checksums:
            verify_sha256(data, path, checksums[stem], title)
    return images, labels.astype(np.int32)


def _check_split(images, labels, images_path, labels_path, expected_count, image_shape) -> None:
    """Counts agree with each other and, when given, with ``expected_count`` and ``image_shape``."""
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no examples")
    if expected_count is not None and len(images) != expected_count:
        raise DataError(
            f"{images_path}: {len(images)} examples, expected {expected_count}; "
            "if this is other IDX data, load it with --data idx"
        )
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise DataError(
            f"{images_path}: images are {'x'.join(map(str, images.shape[1:]))}, expected "
            f"{'x'.join(map(str, image_shape))}; if this is other IDX data, load it with --data idx"
        )


def missing_idx_files(folder: Path) -> list[str]:
    """The IDX file names (without ``.gz``) that ``folder`` lacks; all four if it is no folder."""
    stems = [stem for prefix in SPLIT_PREFIXES.values() for stem in idx_stems(prefix)]
    if not folder.is_dir():
        return stems
    return [s for s in stems if not ((folder / s).exists() or (folder / f"{s}.gz").exists())]


def _explicit_dir(folder: Path, given_as: str) -> Path:
    """``folder`` if it holds the four IDX files; an error naming it otherwise (no fallback)."""
    if not folder.exists():
        raise DataError(f"{given_as} {folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{given_as} {folder}: is a file, expected a folder of the four IDX files")
    missing = missing_idx_files(folder)
    if missing:
        raise DataError(f"{given_as} {folder}: lacks {', '.join(f'{m}[.gz]' for m in missing)}")
    return folder


def default_idx_dirs(spec: IdxSpec) -> list[Path]:
    """The folders searched after ``data_dir`` and ``$SCALELAB_DATA_DIR``, in order, once each."""
    candidates = [SYSTEM_DATA_ROOT / spec.folder, *(r / spec.folder for r in LOCAL_DATA_ROOTS)]
    unique: list[Path] = []
    for path in candidates:
        if not any(path.absolute() == seen.absolute() for seen in unique):
            unique.append(path)
    return unique


def resolve_idx_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder holding the four IDX files of ``name`` (``fashion_mnist``, ``mnist`` or ``idx``).

    Search order: ``data_dir``; ``$SCALELAB_DATA_DIR``; for known datasets then
    ``/usr/share/datasets/<folder>`` and ``data/<folder>`` (working directory, then repository
    root). A folder given explicitly (argument or variable) must hold the files: silently reading
    other data instead would be worse than stopping.
    """
    if data_dir is not None:
        return _explicit_dir(Path(data_dir), "--data-dir")
    if os.environ.get(ENV_VAR):
        return _explicit_dir(Path(os.environ[ENV_VAR]), f"${ENV_VAR}")
    if name not in KNOWN_IDX:
        raise DataError(f"--data {name} reads IDX files from --data-dir DIR or ${ENV_VAR}; set one")
    searched = default_idx_dirs(KNOWN_IDX[name])
    for folder in searched:
        if not missing_idx_files(folder):
            return folder
    raise DataError(not_found_message(KNOWN_IDX[name], searched))


def not_found_message(spec: IdxSpec, searched: Sequence[Path]) -> str:
    """The one-line answer to 'where do I get the data?', listing the ways that apply."""
    local = f"data/{spec.folder}/"
    ways = []
    if spec.package:
        # Inside the .deb the files always sit under usr/share/datasets, whatever the search root.
        pkg, pkg_dir = spec.package, f"pkg/usr/share/datasets/{spec.folder}"
        ways += [
            f"as root `apt-get update && apt-get install {pkg}`",
            f"without root `apt-get download {pkg} && dpkg-deb -x {pkg}_*.deb pkg` "
            f"then copy `{pkg_dir}/*.gz` into `{local}`",
        ]
    ways.append(f"put the four IDX files in a folder and pass `--data-dir DIR` or set `{ENV_VAR}`")
    numbered = "; ".join(f"({i}) {way}" for i, way in enumerate(ways, 1))
    count = {1: "one way", 2: "two ways", 3: "three ways"}[len(ways)]
    looked = ", ".join(map(str, searched))
    return f"{spec.title} IDX files not found (looked in {looked}); get them {count}: {numbered}"


# --- whole datasets -----------------------------------------------------------------------------


def load_dataset(
    name: str = "fashion_mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    verify_checksums: bool = True,
) -> Dataset:
    """The dataset called ``name``: ``fashion_mnist``, ``mnist``, ``idx`` or ``tfds:NAME``.

    ``data_dir`` is the IDX folder (see ``resolve_idx_dir``), or for ``tfds:`` the TFDS data
    dir. ``verify_checksums`` checks the SHA-256 of known files (Fashion-MNIST).
    """
    if name.startswith("tfds:"):
        if name == "tfds:":
            raise UsageError("tfds: needs a dataset name, e.g. tfds:fashion_mnist or tfds:mnist")
        return load_tfds(name.removeprefix("tfds:"), None if data_dir is None else str(data_dir))
    if name != "idx" and name not in KNOWN_IDX:
        raise UsageError(f"unknown dataset {name!r}: expected one of {', '.join(KNOWN_NAMES)}")
    folder = resolve_idx_dir(name, data_dir)
    if name == "idx":
        return _load_idx_folder(folder)
    return _load_known_idx(name, folder, verify_checksums)


def _load_known_idx(name: str, folder: Path, verify_checksums: bool) -> Dataset:
    """A known IDX dataset from ``folder``: counts, shapes, label range and checksums checked."""
    spec = KNOWN_IDX[name]
    common: dict[str, Any] = dict(image_shape=spec.image_shape, num_classes=spec.num_classes, title=spec.title,
                  checksums=spec.sha256 if verify_checksums else None)  # fmt: skip
    train = read_idx_split(folder, SPLIT_PREFIXES["train"], expected_count=spec.num_train, **common)
    test = read_idx_split(folder, SPLIT_PREFIXES["test"], expected_count=spec.num_test, **common)
    return Dataset(name, *train, *test, num_classes=spec.num_classes, source=str(folder.absolute()))


def _load_idx_folder(folder: Path) -> Dataset:
    """Any IDX dataset in ``folder``: structure checked; classes = largest label + 1 (>= 2)."""
    train = read_idx_split(folder, SPLIT_PREFIXES["train"])
    test = read_idx_split(folder, SPLIT_PREFIXES["test"])
    _check_same_image_shape(folder, train[0], test[0])
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    if num_classes < 2:
        raise DataError(f"{folder}: every label is 0; classification needs at least two classes")
    return Dataset("idx", *train, *test, num_classes=num_classes, source=str(folder.absolute()))


def _check_same_image_shape(where, train_images: np.ndarray, test_images: np.ndarray) -> None:
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{where}: train images are {train_images.shape[1:]} but test images are "
            f"{test_images.shape[1:]}; both splits must have one image shape"
        )


def _check_label_range(where, labels: np.ndarray, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(f"{where}: labels include {int(bad[0])} ({bad.size} outside 0..{num_classes - 1})")


# --- TFDS ---------------------------------------------------------------------------------------


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """The ``train`` and ``test`` splits of TFDS image-classification dataset ``name``.

    Read with ``tfds.data_source(..., download=False)``: random access to a dataset prepared on
    disk in ``array_record`` format, decoded with NumPy/PIL, so TensorFlow is not needed and
    nothing is ever downloaded. A trailing channel of 1 is squeezed to ``(N, H, W)``.
    """
    tfds = _import_tfds()
    train_source, test_source = _open_tfds_sources(tfds, name, data_dir)
    train = _read_tfds_split(train_source, f"tfds:{name} train")
    test = _read_tfds_split(test_source, f"tfds:{name} test")
    _check_same_image_shape(f"tfds:{name}", train[0], test[0])
    num_classes = _tfds_num_classes(train_source)
    if num_classes is None:
        num_classes = int(max(train[1].max(), test[1].max())) + 1
    _check_label_range(f"tfds:{name} train", train[1], num_classes)
    _check_label_range(f"tfds:{name} test", test[1], num_classes)
    return Dataset(f"tfds:{name}", *train, *test, num_classes=num_classes, source=f"tfds:{name}")


def _import_tfds():
    # Imported here: tensorflow_datasets is slow to import and only tfds: names need it.
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(
            f"tfds: datasets need tensorflow-datasets and array_record ({err}); "
            "pip install tensorflow-datasets array_record"
        ) from err
    return tfds


def _open_tfds_sources(tfds, name: str, data_dir: str | None) -> tuple[Any, Any]:
    """The ``train`` and ``test`` data sources, or a one-line ``DataError`` on how to prepare."""
    where = data_dir or tfds.core.constants.get_default_data_dir()
    prepare = (
        f"prepare it on a machine with internet with `tfds build {name} --file_format=array_record "
        f"--data_dir DIR`, copy DIR here and pass --data-dir DIR or set TFDS_DATA_DIR"
    )
    try:
        train, test = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataError(f"tfds:{name}: unknown to TFDS and not in {where}; {prepare}") from err
    # tfds reports a dataset missing from data_dir as NotImplementedError (no array_record
    # files) or KeyError (no splits), depending on the version and the split argument, and an
    # unknown version (tfds:mnist:9.9.9) as AssertionError.
    except _TFDS_OPEN_ERRORS as err:
        reason = _first_line(err)
        if not _tfds_is_prepared(tfds, name, data_dir):
            raise DataError(f"tfds:{name}: not prepared in the TFDS data dir {where} ({reason}); {prepare}") from err
        raise DataError(f"tfds:{name}: cannot open train and test in {where}: {reason}") from err
    return train, test


def _tfds_is_prepared(tfds, name: str, data_dir: str | None) -> bool:
    """Whether TFDS finds generated files of ``name`` in ``data_dir`` (False if it cannot tell)."""
    try:
        return bool(tfds.builder(name, data_dir=data_dir).is_prepared())
    except _TFDS_OPEN_ERRORS:
        return False


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, to keep a one-line ``DataError`` one line."""
    text = str(err).strip().strip("\"'")
    return text.splitlines()[0] if text else type(err).__name__


def _read_tfds_split(source, what: str) -> tuple[np.ndarray, np.ndarray]:
    """All records of a data source as ``(images, labels)``, fetched in batches of records."""
    num = len(source)
    if num == 0:
        raise DataError(f"{what}: holds no examples")
    records: list[Mapping[str, Any]] = []
    for start in range(0, num, _TFDS_BATCH):
        # __getitems__ reads a batch in one call; data sources do not support slices.
        records.extend(source.__getitems__(list(range(start, min(num, start + _TFDS_BATCH)))))
    images, labels = _stack_records(records, what)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images, labels


def _stack_records(records: Sequence[Mapping], what: str) -> tuple[np.ndarray, np.ndarray]:
    """``{"image", "label"}`` records as ``(N, H, W, C)`` uint8 images and ``(N,)`` int32 labels."""
    try:
        images = [np.asarray(r["image"]) for r in records]
        labels = np.asarray([r["label"] for r in records])
    except (KeyError, TypeError) as err:
        keys = sorted(records[0]) if isinstance(records[0], Mapping) else type(records[0]).__name__
        raise DataError(f"{what}: not image classification (records have {keys}, need image and label)") from err
    if any(image.dtype != np.uint8 for image in images):
        raise DataError(f"{what}: images are not all uint8; scalelab reads uint8 images only")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataError(f"{what}: labels are not class indices ({labels.dtype} {labels.shape})")
    try:
        stacked = np.stack(images)
    except ValueError as err:
        raise DataError(f"{what}: images differ in shape; scalelab needs one image shape") from err
    return stacked, labels.astype(np.int32)


def _tfds_num_classes(source) -> int | None:
    """``features['label'].num_classes`` from the source's dataset info, if it is a ClassLabel."""
    try:
        return int(source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        return None
