"""Small students (seed report 003): documented counts by hand, shapes, forward."""
import jax
import numpy as np
import pytest

from kd_jax.models import apply_with_features, count_params, get_model
from tests import model_helpers


def conv3x3(cin, cout):
  return 3 * 3 * cin * cout + cout


def dense(i, o):
  return i * o + o


def test_simple_cnn_count():
  # conv(88)-pool -> conv(176)-pool -> flatten 8x8x176 -> Dense(10)
  expected = conv3x3(3, 88) + conv3x3(88, 176) + dense(8 * 8 * 176, 10)
  assert expected == 254_682
  assert count_params("simple_cnn", 10, 32) == expected
  assert abs(expected - 250_000) / 250_000 < 0.03  # report: ~0.25M / 260k
  # 28x28 input: 14 -> 7
  assert count_params("simple_cnn", 10, 28) == (
      conv3x3(3, 88) + conv3x3(88, 176) + dense(7 * 7 * 176, 10))


def test_tiny_cnn_count():
  expected = conv3x3(3, 50) + dense(16 * 16 * 50, 10)
  assert expected == 129_410
  assert count_params("tiny_cnn", 10, 32) == expected
  assert abs(expected - 130_000) / 130_000 < 0.01  # report: 130k


def _params_1ch(name):
  from kd_jax.models import init_shapes
  shapes = init_shapes(name, 10, 28, channels=1)["params"]
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def test_shi_chen_mnist_models_match_their_table_3():
  # Table 3 of Shi & Chen's report counts greyscale 28x28 input and 10 classes.
  teacher = (conv3x3(1, 32) + conv3x3(32, 64)  # 28 -> 26 -> pool/1 25 -> 23
             + dense(11 * 11 * 64, 128) + dense(128, 10))  # pool/2 -> 11
  assert teacher == 1_011_466
  assert _params_1ch("cnn_mnist") == teacher
  student = dense(784, 784) + dense(784, 784) + dense(784, 10)
  assert student == 1_238_730
  assert _params_1ch("mlp_784x2") == student
  # The pipeline feeds 3 repeated channels: only the first layer grows.
  assert count_params("cnn_mnist", 10, 28) == teacher + 2 * 9 * 32
  assert count_params("mlp_784x2", 10, 28) == student + 2 * 784 * 784


def test_mlp_count():
  expected = dense(32 * 32 * 3, 128) + dense(128, 10)
  assert expected == 394_634
  assert count_params("mlp", 10, 32) == expected


@pytest.mark.parametrize("size", [28, 32, 112])
def test_shapes(size):
  h1, h2 = size // 2, size // 4
  logits, feats = model_helpers.shapes("simple_cnn", 10, size)
  assert logits == (1, 10)
  assert feats == {"block1": (1, h1, h1, 88), "block2": (1, h2, h2, 176),
                   "pre_logits": (1, h2 * h2 * 176)}
  logits, feats = model_helpers.shapes("tiny_cnn", 100, size)
  assert logits == (1, 100)
  assert feats == {"block1": (1, h1, h1, 50), "pre_logits": (1, h1 * h1 * 50)}
  logits, feats = model_helpers.shapes("mlp", 10, size)
  assert logits == (1, 10)
  assert feats == {"hidden1": (1, 128), "pre_logits": (1, 128)}


@pytest.mark.parametrize("name", ["simple_cnn", "tiny_cnn", "mlp"])
def test_real_forward(name):
  model = get_model(name, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  if name == "mlp":  # one real (jitted) flax init; the CNNs use host-filled values
    variables = jax.jit(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
    variables = {k: v for k, v in variables.items() if k != "features"}
  else:
    variables = model_helpers.fake_variables(model, x)
  assert set(variables) == {"params"}  # no BatchNorm / dropout

  @jax.jit
  def fwd(variables, x):
    logits, feats, state = apply_with_features(model, variables, x, train=True)
    return logits, feats, model.apply(variables, x, train=False)

  logits, feats, eval_logits = fwd(variables, x)
  assert logits.shape == (2, 10)
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, eval_logits, rtol=1e-5, atol=1e-6)
  assert feats["pre_logits"].shape[0] == 2
