"""VGG family: torchvision parameter counts, shapes for 28..224, a real forward.

vgg16 / vgg16_bn are only ever `jax.eval_shape`d (no real 138M-param init).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import count_params, get_model
from kd_jax.models import vgg
from tests import model_helpers


def conv(cin, cout, k=3, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def dense(i, o):
  return i * o + o


def test_torchvision_counts():
  assert count_params("vgg16", 1000, 224) == 138_357_544
  assert count_params("vgg16_bn", 1000, 224) == 138_365_992


def test_vgg16_count_by_formula_and_size_independent():
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(conv(a, b) for a, b in zip([3] + widths[:-1], widths))
  head = dense(512 * 7 * 7, 4096) + dense(4096, 4096) + dense(4096, 1000)
  assert convs + head == 138_357_544
  assert convs + head + 2 * sum(widths) == 138_365_992  # BN scale + bias
  # The adaptive pool makes the count input-size independent.
  assert count_params("vgg16", 1000, 28) == 138_357_544


def test_vgg_cifar_count():
  # 11 convs (2, 2, 3, 4 per stage), 4 pools: 32 -> 2, flatten 2*2*512,
  # 3 dense layers 2048 -> 1024 -> 512 -> 10.
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512]
  assert len(widths) == 11
  convs = sum(conv(a, b) for a, b in zip([3] + widths[:-1], widths))
  assert convs == 9_995_072
  expected = convs + dense(2 * 2 * 512, 1024) + dense(1024, 512) + dense(512, 10)
  assert expected == 12_623_178
  assert count_params("vgg_cifar", 10, 32) == expected
  assert count_params("vgg_cifar", 10, 28) == expected  # size independent
  assert 11e6 < expected < 13e6  # report: "around 12 million"


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "vgg_cifar"])
@pytest.mark.parametrize("size", [28, 32, 112])
def test_logits_shape(name, size):
  logits, feats = model_helpers.shapes(name, 7, size)
  assert logits == (1, 7)
  assert "pre_logits" in feats


def _pooled(n, pools):
  for _ in range(pools):
    n = n // 2 if n > 1 else 1  # floor-mode pool, skipped at size 1
  return n


@pytest.mark.parametrize("size", [28, 32, 112, 224])
def test_vgg16_feature_shapes(size):
  _, feats = model_helpers.shapes("vgg16", 1000, size)
  chans = [64, 128, 256, 512, 512]
  expected = {f"block{i + 1}": (1, _pooled(size, i + 1), _pooled(size, i + 1), c)
              for i, c in enumerate(chans)}
  expected["pre_logits"] = (1, 4096)
  assert feats == expected
  if size == 224:
    assert [feats[f"block{i}"][1] for i in range(1, 6)] == [112, 56, 28, 14, 7]
  if size == 28:
    assert [feats[f"block{i}"][1] for i in range(1, 6)] == [14, 7, 3, 1, 1]


def test_vgg_cifar_feature_shapes():
  _, feats = model_helpers.shapes("vgg_cifar", 10, 32)
  assert feats == {"block1": (1, 16, 16, 64), "block2": (1, 8, 8, 128),
                   "block3": (1, 4, 4, 256), "block4": (1, 2, 2, 512),
                   "pre_logits": (1, 512)}


def _torch_adaptive_avg_pool_ref(x, out):
  """Direct transcription of torch's AdaptiveAvgPool2d index rule (NHWC)."""
  b, h, w, c = x.shape
  y = np.zeros((b, out, out, c), np.float64)
  for i in range(out):
    hs, he = (i * h) // out, -(-((i + 1) * h) // out)
    for j in range(out):
      ws, we = (j * w) // out, -(-((j + 1) * w) // out)
      y[:, i, j] = x[:, hs:he, ws:we].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize("size", [1, 3, 5, 9, 13, 14, 28])
def test_adaptive_avg_pool_matches_torch_rule(size):
  x = np.random.RandomState(size).randn(2, size, size + 1, 3).astype(np.float32)
  pool = jax.jit(vgg.adaptive_avg_pool, static_argnums=1)
  got = np.asarray(pool(jnp.asarray(x), (7, 7)))
  np.testing.assert_allclose(got, _torch_adaptive_avg_pool_ref(x, 7),
                             rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_identity_at_7():
  x = jnp.asarray(np.random.RandomState(0).randn(1, 7, 7, 4), jnp.float32)
  assert (vgg.adaptive_avg_pool(x, (7, 7)) == x).all()


def test_max_pool_skips_size_one_axis():
  x = jnp.arange(2 * 1 * 4 * 1, dtype=jnp.float32).reshape(2, 1, 4, 1)
  y = vgg.max_pool_2x2(x)
  assert y.shape == (2, 1, 2, 1)
  np.testing.assert_array_equal(y[0, 0, :, 0], [1.0, 3.0])


def test_vgg_cifar_real_forward():
  model = get_model("vgg_cifar", num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = model_helpers.fake_variables(model, x)
  assert set(variables) == {"params"}  # no BatchNorm in the report's teacher

  @jax.jit
  def fwd(variables, x, key):
    train = model.apply(variables, x, train=True, rngs={"dropout": key})
    test = model.apply(variables, x, train=False)
    return train, test

  train, test = fwd(variables, x, jax.random.PRNGKey(2))
  _, test2 = fwd(variables, x, jax.random.PRNGKey(3))
  assert train.shape == test.shape == (2, 10)
  assert np.isfinite(np.asarray(train)).all() and np.isfinite(np.asarray(test)).all()
  assert not np.allclose(train, test)  # dropout active only in training
  np.testing.assert_array_equal(test, test2)  # eval ignores the rng


def test_bn_variant_real_forward_small_cfg():
  """The vgg16_bn code path (conv-BN-ReLU, batch_stats) on a tiny config."""
  model = vgg.VGG(num_classes=5, cfg=(8, vgg.M, 16, vgg.M), batch_norm=True,
                  pool_size=(7, 7), hidden=(32, 32))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = model_helpers.fake_variables(model, x)
  assert set(variables) == {"params", "batch_stats"}
  fwd = jax.jit(lambda v, x, k: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k}))
  logits, state = fwd(variables, x, jax.random.PRNGKey(3))
  assert logits.shape == (2, 5)
  assert np.isfinite(np.asarray(logits)).all()
  assert not np.allclose(state["batch_stats"]["bn1_1"]["mean"],
                         variables["batch_stats"]["bn1_1"]["mean"])
