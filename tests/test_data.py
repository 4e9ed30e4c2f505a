"""scalelab.data: IDX reading and validation, the search order, the idx loader, TFDS.

Every file is built by hand in ``tmp_path`` (header + bytes, gzip or plain), so each test is
independent of the machine; only ``test_real_fashion_mnist_*`` reads the installed dataset.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab import data
from scalelab.data import (
    Dataset,
    load_dataset,
    load_tfds,
    read_idx,
    read_idx_split,
    resolve_idx_dir,
    verify_sha256,
)
from scalelab.errors import DataError, UsageError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --- helpers: IDX files by hand -----------------------------------------------------------------


def idx_header(dims, dtype_code=0x08, zeros=0) -> bytes:
    """The IDX header: two zero bytes, element type, ndim, then big-endian 32-bit dims."""
    return struct.pack(">HBB", zeros, dtype_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def idx_bytes(array: np.ndarray) -> bytes:
    return idx_header(array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def write_bytes(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def tiny_split(num: int, side=(4, 3), num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num, *side), dtype=np.uint8)
    labels = (np.arange(num) % num_classes).astype(np.uint8)
    return images, labels


def write_idx_folder(folder: Path, num_train=6, num_test=4, gz=True, **split_kwargs) -> Path:
    """The four IDX files of a tiny dataset; returns ``folder``."""
    train_x, train_y = tiny_split(num_train, **split_kwargs)
    test_x, test_y = tiny_split(num_test, seed=1, **split_kwargs)
    arrays = dict(train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y)
    for key, array in arrays.items():
        write_bytes(folder / (STEMS[key] + (".gz" if gz else "")), idx_bytes(array), gz)
    return folder


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# --- one file -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2), (2, 3, 2, 3)], ids=["labels", "images", "rgb"])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, gz, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = write_bytes(tmp_path / "x-idx", idx_bytes(array), gz)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_gzip_is_detected_by_magic_bytes_not_by_suffix(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_bytes(tmp_path / "images", idx_bytes(array), gz=True)
    plain_with_suffix = write_bytes(tmp_path / "images.gz", idx_bytes(array), gz=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(read_idx(plain_with_suffix), array)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
CORRUPTIONS = {
    # case: (file bytes, gzip?, ndims required, text the message must hold)
    "empty": (b"", False, (), "empty"),
    "empty gzip": (b"", True, (), "too short"),
    "three bytes": (b"\x00\x00\x08", False, (), "too short"),
    "bad magic": (b"\x12\x34" + GOOD[2:], False, (), "bad magic number 0x12340803"),
    "float element type": (idx_header((2, 3, 4), dtype_code=0x0D) + GOOD[16:], False, (), "0x0d"),
    "labels where images belong": (idx_bytes(np.zeros(3, np.uint8)), False, (3, 4), "0x00000803"),
    "images where labels belong": (GOOD, False, (1,), "wrong magic number 0x00000803"),
    "zero dims": (idx_header(()), False, (), "0 dimensions"),
    "header truncated": (GOOD[:10], False, (), "header truncated"),
    "payload truncated": (GOOD[:-1], False, (), "truncated"),
    "extra bytes": (GOOD + b"\x00\x00", False, (), "2 extra bytes"),
    "payload truncated in gzip": (GOOD[:-5], True, (), "truncated"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_idx_content_gives_one_line_data_error_naming_the_file(tmp_path, case):
    payload, gz, ndims, needle = CORRUPTIONS[case]
    path = write_bytes(tmp_path / "bad-idx3-ubyte", payload, gz)
    with pytest.raises(DataError) as err:
        read_idx(path, ndims)
    assert_one_line(err, str(path), needle)


def _truncated_gzip(raw: bytes) -> bytes:
    return gzip.compress(raw)[:-12]


def _corrupted_gzip(raw: bytes) -> bytes:
    packed = bytearray(gzip.compress(raw))
    packed[12:20] = b"\xff" * 8  # inside the deflate stream
    return bytes(packed)


GZIP_CORRUPTIONS = {
    "truncated gzip": _truncated_gzip,
    "corrupted deflate stream": _corrupted_gzip,
    "gzip magic then garbage": lambda raw: b"\x1f\x8b" + b"garbage" * 4,
    "bad crc": lambda raw: gzip.compress(raw)[:-8] + b"\x00" * 4 + gzip.compress(raw)[-4:],
}


@pytest.mark.parametrize("case", GZIP_CORRUPTIONS)
def test_broken_gzip_gives_one_line_data_error_naming_the_file(tmp_path, case):
    raw = idx_bytes(np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8))
    path = write_bytes(tmp_path / "images.gz", GZIP_CORRUPTIONS[case](raw))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert_one_line(err, str(path), "gzip")


def test_directory_and_missing_file_give_data_error_naming_the_path(tmp_path):
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "a-dir")
    assert_one_line(err, str(tmp_path / "a-dir"), "directory")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nothing-here")
    assert_one_line(err, str(tmp_path / "nothing-here"), "missing")


def _idx_like_bytes():
    """Bytes that start like IDX (zeros, element type, ndim, small dims) with any payload."""
    dims = st.lists(st.integers(0, 5), min_size=0, max_size=4)
    return st.builds(
        lambda d, code, payload, cut: (idx_header(d, dtype_code=code) + payload)[:cut],
        dims, st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0D]), st.binary(max_size=200),
        st.integers(0, 300),
    )  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@given(
    payload=st.one_of(st.binary(max_size=300), _idx_like_bytes()),
    gz=st.booleans(),
    ndims=st.sampled_from([(), (1,), (3, 4)]),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_read_idx_raises_nothing_but_data_error_on_any_bytes(fuzz_dir, payload, gz, ndims):
    path = write_bytes(fuzz_dir / "fuzz-idx", payload, gz)
    try:
        array = read_idx(path, ndims)
    except DataError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    # Accepted only if the header accounts for every byte.
    assert array.dtype == np.uint8 and len(payload) == 4 + 4 * array.ndim + array.size
    assert not ndims or array.ndim in ndims


# --- one split ----------------------------------------------------------------------------------


def test_split_reads_images_and_int32_labels_from_plain_files(tmp_path):
    folder = write_idx_folder(tmp_path, gz=False)
    images, labels = read_idx_split(folder, "t10k")
    expected_images, expected_labels = tiny_split(4, seed=1)
    np.testing.assert_array_equal(images, expected_images)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected_labels)


def test_split_with_fewer_labels_than_images_names_both_files(tmp_path):
    folder = write_idx_folder(tmp_path)
    write_bytes(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(5, np.uint8)), gz=True)
    with pytest.raises(DataError) as err:
        read_idx_split(folder, "train")
    assert_one_line(err, "train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "5 labels")


def test_split_with_no_examples_is_an_error(tmp_path):
    folder = tmp_path / "empty-split"
    write_bytes(folder / STEMS["train_images"], idx_header((0, 4, 3)))
    write_bytes(folder / STEMS["train_labels"], idx_header((0,)))
    with pytest.raises(DataError) as err:
        read_idx_split(folder, "train")
    assert_one_line(err, STEMS["train_images"], "no examples")


def test_split_missing_a_file_names_it(tmp_path):
    folder = write_idx_folder(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        read_idx_split(folder, "t10k")
    assert_one_line(err, str(folder / "t10k-labels-idx1-ubyte"), "missing")


def test_split_checks_expected_count_and_image_shape(tmp_path):
    folder = write_idx_folder(tmp_path)
    with pytest.raises(DataError) as err:
        read_idx_split(folder, "train", expected_count=60000)
    assert_one_line(err, "train-images-idx3-ubyte.gz", "6 examples, expected 60000", "--data idx")
    with pytest.raises(DataError) as err:
        read_idx_split(folder, "train", image_shape=(28, 28))
    assert_one_line(err, "train-images-idx3-ubyte.gz", "4x3, expected 28x28")


# --- checksums ----------------------------------------------------------------------------------


def test_verify_sha256_accepts_the_matching_digest_and_names_the_file_otherwise():
    payload = b"not fashion"
    verify_sha256(payload, "f", hashlib.sha256(payload).hexdigest(), "Fashion-MNIST")
    with pytest.raises(DataError) as err:
        verify_sha256(payload, "/x/train-images-idx3-ubyte.gz", "0" * 64, "Fashion-MNIST")
    assert_one_line(
        err, "/x/train-images-idx3-ubyte.gz", hashlib.sha256(payload).hexdigest(),
        "not that of the official Fashion-MNIST file", "--data idx", "verify_checksums=False",
    )  # fmt: skip


@pytest.fixture
def tiny_fashion_spec(monkeypatch):
    """Fashion-MNIST's spec (real checksums) with counts and shape of the tiny test folder."""
    spec = dataclasses.replace(
        data.KNOWN_IDX["fashion_mnist"], num_train=6, num_test=4, image_shape=(4, 3), num_classes=3
    )
    monkeypatch.setitem(data.KNOWN_IDX, "fashion_mnist", spec)
    return spec


def test_fashion_mnist_checksum_mismatch_is_reported_when_counts_pass(tmp_path, tiny_fashion_spec):
    folder = write_idx_folder(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", folder)
    assert_one_line(err, str(folder / "train-images-idx3-ubyte.gz"), "SHA-256", "official")


def test_checksums_can_be_skipped_for_intentional_other_data(tmp_path, tiny_fashion_spec):
    folder = write_idx_folder(tmp_path)
    dataset = load_dataset("fashion_mnist", folder, verify_checksums=False)
    assert dataset.train_images.shape == (6, 4, 3) and dataset.num_classes == 3


def test_known_dataset_rejects_labels_outside_its_classes(tmp_path, monkeypatch, tiny_fashion_spec):
    monkeypatch.setitem(data.KNOWN_IDX, "fashion_mnist", dataclasses.replace(tiny_fashion_spec, num_classes=2))
    folder = write_idx_folder(tmp_path)  # labels 0, 1, 2
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", folder, verify_checksums=False)
    assert_one_line(err, str(folder / "train-labels-idx1-ubyte.gz"), "include 2", "outside 0..1")


def test_known_dataset_rejects_wrong_counts(tmp_path):
    folder = write_idx_folder(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", folder)
    assert_one_line(err, "train-images-idx3-ubyte.gz", "expected 60000")


# --- where the files are found ------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Fake system and local data roots, and no $SCALELAB_DATA_DIR, so the machine is irrelevant."""
    paths = {
        "system": tmp_path / "usr-share-datasets",
        "cwd": tmp_path / "cwd-data",
        "repo": tmp_path / "repo-data",
        "explicit": tmp_path / "explicit",
        "env": tmp_path / "env",
    }
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", paths["system"])
    monkeypatch.setattr(data, "LOCAL_DATA_ROOTS", (paths["cwd"], paths["repo"]))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return paths


def _folder(roots, where: str, name: str = "fashion-mnist") -> Path:
    return roots[where] if where in ("explicit", "env") else roots[where] / name


@pytest.mark.parametrize(
    "present,expected",
    [
        (["explicit", "env", "system", "cwd", "repo"], "explicit"),
        (["env", "system", "cwd", "repo"], "env"),
        (["system", "cwd", "repo"], "system"),
        (["cwd", "repo"], "cwd"),
        (["repo"], "repo"),
    ],
)
def test_search_order_is_explicit_then_env_then_system_then_local(roots, monkeypatch, present, expected):
    for where in present:
        write_idx_folder(_folder(roots, where))
    if "env" in present:
        monkeypatch.setenv(data.ENV_VAR, str(roots["env"]))
    explicit = roots["explicit"] if "explicit" in present else None
    assert resolve_idx_dir("fashion_mnist", explicit) == _folder(roots, expected)


def test_mnist_searches_mnist_folders(roots):
    write_idx_folder(_folder(roots, "system"))  # fashion-mnist only: must not be taken
    write_idx_folder(_folder(roots, "repo", "mnist"))
    assert resolve_idx_dir("mnist", None) == roots["repo"] / "mnist"


def test_incomplete_system_folder_is_skipped(roots):
    system = write_idx_folder(_folder(roots, "system"))
    (system / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx_folder(_folder(roots, "cwd"))
    assert resolve_idx_dir("fashion_mnist", None) == _folder(roots, "cwd")


def test_explicit_dir_without_the_files_is_an_error_not_a_fallback(roots):
    write_idx_folder(_folder(roots, "system"))
    roots["explicit"].mkdir()
    with pytest.raises(DataError) as err:
        resolve_idx_dir("fashion_mnist", roots["explicit"])
    assert_one_line(err, str(roots["explicit"]), "train-images-idx3-ubyte[.gz]")
    with pytest.raises(DataError) as err:
        resolve_idx_dir("fashion_mnist", roots["explicit"] / "nope")
    assert_one_line(err, str(roots["explicit"] / "nope"), "no such folder")


def test_env_var_without_the_files_is_an_error_naming_it(roots, monkeypatch):
    write_idx_folder(_folder(roots, "system"))
    monkeypatch.setenv(data.ENV_VAR, str(roots["env"]))
    with pytest.raises(DataError) as err:
        resolve_idx_dir("fashion_mnist", None)
    assert_one_line(err, "$SCALELAB_DATA_DIR", str(roots["env"]))


def test_not_found_message_is_one_line_with_the_three_ways_to_get_the_data(roots):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist")
    assert_one_line(
        err,
        "three ways",
        "(1) as root `apt-get update && apt-get install dataset-fashion-mnist`",
        "(2) without root `apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb pkg`",
        "pkg/usr/share/datasets/fashion-mnist/*.gz",  # the package's layout, whatever the root
        "into `data/fashion-mnist/`",
        "(3) put the four IDX files in a folder and pass `--data-dir DIR` or set `SCALELAB_DATA_DIR`",
        str(_folder(roots, "system")),
        str(_folder(roots, "cwd")),
    )


def test_mnist_not_found_offers_only_the_ways_that_exist(roots):
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    assert_one_line(err, "one way", "--data-dir DIR", "SCALELAB_DATA_DIR")
    assert "apt-get" not in str(err.value)


def test_unknown_dataset_name_is_a_usage_error_listing_the_names():
    with pytest.raises(UsageError) as err:
        load_dataset("cifar")
    assert_one_line(err, "fashion_mnist", "mnist", "idx", "tfds:NAME")


# --- the "idx" loader ---------------------------------------------------------------------------


def test_idx_loader_reads_any_counts_and_sizes(tmp_path):
    folder = write_idx_folder(tmp_path / "d", num_train=7, num_test=5, side=(5, 2), num_classes=4)
    dataset = load_dataset("idx", folder)
    assert isinstance(dataset, Dataset)
    assert (dataset.name, dataset.source, dataset.num_classes) == ("idx", str(folder), 4)
    assert dataset.train_images.shape == (7, 5, 2) and dataset.test_images.shape == (5, 5, 2)
    assert dataset.train_labels.dtype == np.int32
    np.testing.assert_array_equal(dataset.test_labels, [0, 1, 2, 3, 0])


def test_idx_loader_reads_colour_images_and_takes_the_env_var(tmp_path, monkeypatch):
    folder = write_idx_folder(tmp_path / "rgb", gz=False, side=(3, 3, 3))
    monkeypatch.setenv(data.ENV_VAR, str(folder))
    dataset = load_dataset("idx")
    assert dataset.train_images.shape == (6, 3, 3, 3)


def test_idx_loader_needs_a_folder(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("idx")
    assert_one_line(err, "--data-dir DIR", "SCALELAB_DATA_DIR")


def test_idx_loader_rejects_a_single_class(tmp_path):
    folder = write_idx_folder(tmp_path, num_classes=1)
    with pytest.raises(DataError) as err:
        load_dataset("idx", folder)
    assert_one_line(err, str(folder), "at least two classes")


def test_idx_loader_rejects_train_and_test_of_different_image_shapes(tmp_path):
    folder = write_idx_folder(tmp_path)
    images = np.zeros((4, 5, 5), np.uint8)
    write_bytes(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    with pytest.raises(DataError) as err:
        load_dataset("idx", folder)
    assert_one_line(err, str(folder), "one image shape")


# --- the real Fashion-MNIST ---------------------------------------------------------------------


def test_real_fashion_mnist_loads_with_official_shapes_classes_and_checksums():
    if data.missing_idx_files(REAL_FASHION):
        pytest.skip(f"no Fashion-MNIST at {REAL_FASHION} (apt-get install dataset-fashion-mnist)")
    dataset = load_dataset("fashion_mnist", REAL_FASHION)  # verify_checksums=True by default
    assert dataset.train_images.shape == (60000, 28, 28)
    assert dataset.test_images.shape == (10000, 28, 28)
    assert dataset.train_images.dtype == np.uint8 and dataset.test_images.dtype == np.uint8
    assert dataset.num_classes == 10 and dataset.source == str(REAL_FASHION)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)


# --- TFDS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def tfds_mock(tfds, monkeypatch):
    """``tfds.testing.mock_data`` made to serve ``__getitems__`` (TFDS 4.9.10 on Python 3.11).

    mock_data sets ``__getitems__`` on a MagicMock instance, but ``unittest.mock`` treats only
    the magic methods it knows as methods: ``__getitems__`` stays a plain attribute, is called
    without ``self``, and TFDS's ``_getitems(self, record_keys, generator)`` fails with "missing
    1 required positional argument: 'record_keys'". ``__getitem__`` works. Patch in a
    ``_getitems`` that takes no ``self``; everything else stays the real mock.
    """
    from tensorflow_datasets.testing import mocking

    def getitems_without_self(record_keys, generator, serialized=False):
        assert not serialized
        return [generator[key] for key in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems_without_self)
    policy = tfds.testing.MockPolicy.USE_CODE  # no metadata files: the builder's code says it all
    return lambda num: tfds.testing.mock_data(num_examples=num, policy=policy)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_tfds_mock_data_loads_through_data_source(tfds_mock, monkeypatch, name):
    monkeypatch.setattr(data, "_TFDS_BATCH", 4)  # several batches for 10 records
    with tfds_mock(10):
        dataset = load_dataset(f"tfds:{name}")
    assert (dataset.name, dataset.source, dataset.num_classes) == (f"tfds:{name}",) * 2 + (10,)
    assert dataset.train_images.shape == (10, 28, 28) and dataset.test_images.shape == (10, 28, 28)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert dataset.train_labels.min() >= 0 and dataset.train_labels.max() <= 9


@pytest.fixture
def prepared_tfds_dir(tfds, tmp_path):
    """A tiny TFDS dataset really prepared as array_record in ``tmp_path`` (no TensorFlow).

    Images are given as PIL images: TFDS encodes those to PNG with PIL, whereas NumPy images
    would need TensorFlow. The builder is unregistered, so ``data_source`` finds it from the
    files alone, as it would a dataset prepared on another machine.
    """
    import PIL.Image

    def images_and_labels(num, channels, seed):
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (num, 6, 5, channels), dtype=np.uint8), np.arange(num) % 3

    def pil(image):
        return PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)

    def prepare(channels: int):
        class ScalelabTinyDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
            VERSION = tfds.core.Version("1.0.0")
            # TFDS 4.9.10 looks up a dotted module's code path with importlib_resources, which it
            # does not install on Python >= 3.9; a one-part module name skips that lookup.
            __module__ = "scalelab_test_builder"

            def _info(self):
                features = tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(6, 5, channels), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=4),  # label 3 never occurs
                })  # fmt: skip
                # Unshuffled, so records come back in the order written and compare exactly.
                return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

            def _split_generators(self, dl_manager):
                return {
                    "train": self._generate_examples(9, 0),
                    "test": self._generate_examples(5, 1),
                }

            def _generate_examples(self, num, seed):
                images, labels = images_and_labels(num, channels, seed)
                for i in range(num):
                    yield i, {"image": pil(images[i]), "label": int(labels[i])}

        ScalelabTinyDigits(data_dir=tmp_path, file_format="array_record").download_and_prepare()
        return tmp_path, images_and_labels(9, channels, 0), images_and_labels(5, channels, 1)

    return prepare


@pytest.mark.parametrize("channels", [1, 3])
def test_tfds_reads_a_prepared_dataset_exactly(prepared_tfds_dir, monkeypatch, channels):
    data_dir, (train_x, train_y), (test_x, test_y) = prepared_tfds_dir(channels)
    monkeypatch.setattr(data, "_TFDS_BATCH", 4)
    dataset = load_tfds("scalelab_tiny_digits", str(data_dir))
    squeeze = (lambda x: x[..., 0]) if channels == 1 else (lambda x: x)
    np.testing.assert_array_equal(dataset.train_images, squeeze(train_x))
    np.testing.assert_array_equal(dataset.test_images, squeeze(test_x))
    np.testing.assert_array_equal(dataset.train_labels, train_y)
    np.testing.assert_array_equal(dataset.test_labels, test_y)
    assert dataset.num_classes == 4  # from the ClassLabel, not from the largest label


def test_tfds_dataset_not_prepared_is_one_line_saying_how_to_prepare(tfds, tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("tfds:fashion_mnist", tmp_path / "tfds")
    assert_one_line(err, "not prepared", str(tmp_path / "tfds"), "tfds build fashion_mnist", "TFDS_DATA_DIR")


def test_tfds_unknown_dataset_is_one_line(tfds, tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("tfds:scalelab_no_such_dataset", tmp_path)
    assert_one_line(err, "unknown to TFDS", "tfds:scalelab_no_such_dataset")


@pytest.mark.parametrize("name", ["tfds:fashion_mnist:9.9.9", "tfds:"])
def test_tfds_bad_name_or_version_is_one_line_not_a_traceback(tfds, tmp_path, name):
    with pytest.raises((DataError, UsageError)) as err:
        load_dataset(name, tmp_path)
    assert_one_line(err, "tfds:")
