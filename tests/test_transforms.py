import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.errors import UsageError
from scalelab.transforms import apply_affine, fit_affine, parse_transform, parse_transforms

from .conftest import make_images


@pytest.mark.parametrize(
    "name,divisor", [("/1", 1.0), ("/255", 255.0), ("/1000", 1000.0), ("/1e3", 1e3), ("/0.5", 0.5)]
)
def test_divide_names_parse_to_their_divisor(name, divisor):
    t = parse_transform(name)
    assert (t.kind, t.divisor, t.name) == ("divide", divisor, name)


def test_list_keeps_names_as_written_including_bracketed_minmax():
    names = [t.name for t in parse_transforms("/1,/255,zscore,[-1,1],pixel-zscore,robust")]
    assert names == ["/1", "/255", "zscore", "[-1,1]", "pixel-zscore", "robust"]
    assert parse_transforms("[-1,1]")[0].kind == "minmax"


@pytest.mark.parametrize("bad", ["/0", "/-3", "/abc", "/inf", "/nan", "/", "scale", "255", "", "/1,,/255", "/1,/1"])
def test_bad_names_raise_usage_error_listing_valid_forms(bad):
    with pytest.raises(UsageError) as err:
        parse_transforms(bad)
    assert "\n" not in str(err.value)
    assert "/C" in str(err.value) or "more than once" in str(err.value)


@given(st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_parser_never_fails_with_anything_but_usage_error(text):
    try:
        transforms = parse_transforms(text)
    except UsageError:
        return
    assert all(t.kind in {"divide", "zscore", "pixel-zscore", "minmax", "robust"} for t in transforms)


@pytest.fixture
def images():
    return make_images(500, side=6, seed=3)[0]


def _transformed(name, images):
    c = fit_affine(parse_transform(name), images)
    return apply_affine(images.reshape(len(images), -1), c.shift, c.scale).astype(np.float64)


def test_divide_is_plain_division(images):
    np.testing.assert_allclose(_transformed("/255", images), images.reshape(500, -1) / 255.0, rtol=1e-6)


def test_zscore_has_zero_mean_unit_std_over_all_pixels(images):
    x = _transformed("zscore", images)
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5


def test_pixel_zscore_standardises_each_pixel_and_leaves_constant_pixels_unscaled(images):
    images = images.copy()
    images[:, 0, 0] = 7  # a pixel that never varies
    x = _transformed("pixel-zscore", images)
    np.testing.assert_allclose(x[:, 1:].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, 1:].std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(x[:, 0], 0.0)


def test_minmax_maps_training_range_onto_minus_one_one(images):
    x = _transformed("[-1,1]", images)
    assert x.min() == pytest.approx(-1, abs=1e-6) and x.max() == pytest.approx(1, abs=1e-6)


def test_robust_centres_the_median_and_divides_by_the_iqr(images):
    x = _transformed("robust", images)
    q25, median, q75 = np.percentile(images, [25, 50, 75])
    np.testing.assert_allclose(x, (images.reshape(500, -1) - median) / (q75 - q25), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_constants_from_uint8_value_counts_equal_numpys_float64_statistics(seed):
    """The fits read uint8 images through their value counts; numpy on float64 copies is the reference:
    the same means and percentiles exactly, standard deviations to float64 rounding."""
    from scalelab.transforms import _global_mean_std, _percentiles, _pixel_mean_std

    rng = np.random.default_rng(seed)
    x = rng.integers(0, rng.integers(1, 256, endpoint=True), size=(int(rng.integers(2, 3000)), 17), endpoint=True)
    x = x.astype(np.uint8)
    x[:, 3] = 9  # a constant pixel
    mean, std = _pixel_mean_std(x)
    np.testing.assert_array_equal(mean, x.mean(axis=0, dtype=np.float64))
    np.testing.assert_allclose(std, x.std(axis=0, dtype=np.float64), rtol=1e-12, atol=1e-12)
    qs = tuple(rng.uniform(0, 100, size=5)) + (0.0, 25.0, 50.0, 75.0, 100.0)
    assert _percentiles(x, qs) == [float(v) for v in np.percentile(x, qs)]
    assert _percentiles(x.astype(np.float32), qs) == [float(v) for v in np.percentile(x, qs)]  # the float path
    flat = x.astype(np.float64).ravel()
    got_mean, got_std = _global_mean_std(x)
    assert got_mean == flat.mean() or got_mean == pytest.approx(flat.mean(), rel=1e-15)
    assert got_std == pytest.approx(flat.std(), rel=1e-12)
    assert _global_mean_std(x) == _global_mean_std(x.astype(np.float32))  # exact sums either way
