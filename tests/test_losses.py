import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.errors import UsageError
from scalelab.losses import KERAS_EPSILON, get_loss, keras_cross_entropy, softmax_cross_entropy, softmax_mse


def _np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0]], np.float32)
LABELS = np.array([0, 2, 1], np.int32)


def test_ce_is_minus_log_softmax_of_the_label():
    expected = -np.log(_np_softmax(LOGITS)[np.arange(3), LABELS])
    np.testing.assert_allclose(softmax_cross_entropy(LOGITS, LABELS), expected, rtol=1e-5)


def test_keras_ce_equals_ce_when_no_probability_is_clipped():
    np.testing.assert_allclose(keras_cross_entropy(LOGITS, LABELS), softmax_cross_entropy(LOGITS, LABELS), rtol=1e-5)


def test_keras_ce_caps_a_confidently_wrong_example_at_minus_log_epsilon():
    # Raw-pixel logits differ by hundreds: exact CE is ~300, Keras reports -log(1e-7) = 16.118.
    logits = jnp.array([[300.0, 0.0, 0.0]])
    assert float(softmax_cross_entropy(logits, jnp.array([1]))[0]) == pytest.approx(300.0, rel=1e-6)
    assert float(keras_cross_entropy(logits, jnp.array([1]))[0]) == pytest.approx(-np.log(KERAS_EPSILON), rel=1e-6)


def test_keras_ce_gives_no_gradient_through_a_clipped_example():
    grad = jax.grad(lambda z: keras_cross_entropy(z, jnp.array([1]))[0])(jnp.array([[300.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(grad, 0.0)


def test_keras_ce_caps_a_confident_right_example_at_minus_log_one_minus_epsilon():
    # In float32, 1 - 1e-7 rounds to 1 - 2**-23, as it does in Keras: the floor is ~1.2e-7, not 0.
    value = float(keras_cross_entropy(jnp.array([[300.0, 0.0, 0.0]]), jnp.array([0]))[0])
    assert value == pytest.approx(-np.log(np.float32(1 - KERAS_EPSILON)), rel=1e-3)
    assert value > 0


def test_mse_is_mean_squared_difference_of_softmax_and_one_hot():
    expected = ((_np_softmax(LOGITS) - np.eye(3)[LABELS]) ** 2).mean(-1)
    np.testing.assert_allclose(softmax_mse(LOGITS, LABELS), expected, rtol=1e-5)


def test_unknown_loss_names_the_choices():
    with pytest.raises(UsageError, match="keras-ce"):
        get_loss("hinge")
