"""ResNet family: torchvision parameter counts, torch-equal shapes, real forward.

resnet50 and the 224 cases are only `jax.eval_shape`d.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import apply_with_features, count_params, get_model
from kd_jax.models import resnet
from tests import model_helpers


def test_torchvision_counts():
  assert count_params("resnet18", 1000, 224) == 11_689_512
  assert count_params("resnet50", 1000, 224) == 25_557_032
  # global average pooling: size independent
  assert count_params("resnet18", 1000, 28) == 11_689_512


def test_resnet18_count_by_formula():
  conv = lambda k, i, o: k * k * i * o  # no bias
  bn = lambda c: 2 * c
  total = conv(7, 3, 64) + bn(64)
  cin = 64
  for stage, planes in enumerate((64, 128, 256, 512)):
    for j in range(2):
      total += conv(3, cin, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
      if stage > 0 and j == 0:
        total += conv(1, cin, planes) + bn(planes)
      cin = planes
  total += 512 * 10 + 10
  assert count_params("resnet18", 10, 32) == total


def _torch_out(n, k, s, p):
  return (n + 2 * p - k) // s + 1


def _expected_features(size, expansion):
  stem = _torch_out(size, 7, 2, 3)
  n = _torch_out(stem, 3, 2, 1)  # max-pool
  out = {"stem": (1, stem, stem, 64)}
  for i, planes in enumerate((64, 128, 256, 512)):
    if i > 0:
      n = _torch_out(n, 3, 2, 1)
    out[f"layer{i + 1}"] = (1, n, n, planes * expansion)
  out["pre_logits"] = (1, 512 * expansion)
  return out


@pytest.mark.parametrize("name,expansion", [("resnet18", 1), ("resnet50", 4)])
@pytest.mark.parametrize("size", [28, 32, 112])
def test_logits_and_feature_shapes(name, expansion, size):
  logits, feats = model_helpers.shapes(name, 7, size)
  assert logits == (1, 7)
  assert feats == _expected_features(size, expansion)


def test_feature_shapes_224():
  _, feats = model_helpers.shapes("resnet18", 1000, 224)
  assert feats == {"stem": (1, 112, 112, 64), "layer1": (1, 56, 56, 64),
                   "layer2": (1, 28, 28, 128), "layer3": (1, 14, 14, 256),
                   "layer4": (1, 7, 7, 512), "pre_logits": (1, 512)}
  assert feats == _expected_features(224, 1)
  # torch values at 28: conv1 14, max-pool 7, layers 7, 4, 2, 1
  feats28 = model_helpers.shapes("resnet18", 1000, 28)[1]
  assert [feats28[k][1] for k in ("stem", "layer1", "layer2", "layer3", "layer4")
          ] == [14, 7, 4, 2, 1]


def test_bottleneck_stride_on_3x3():
  """torchvision v1.5: conv1 (1x1) keeps the size, conv2 (3x3) strides."""
  block = resnet.Bottleneck(planes=8, stride=2)
  x = jax.ShapeDtypeStruct((1, 9, 9, 16), jnp.float32)
  v = jax.eval_shape(lambda x: block.init(jax.random.PRNGKey(0), x, train=False), x)
  (y, state) = jax.eval_shape(lambda v, x: block.apply(
      v, x, train=False, capture_intermediates=True,
      mutable=["intermediates"]), v, x)
  inter = state["intermediates"]
  assert inter["conv1"]["__call__"][0].shape == (1, 9, 9, 8)
  assert inter["conv2"]["__call__"][0].shape == (1, 5, 5, 8)
  assert inter["conv3"]["__call__"][0].shape == (1, 5, 5, 32)
  assert inter["downsample_conv"]["__call__"][0].shape == (1, 5, 5, 32)
  assert y.shape == (1, 5, 5, 32)


def test_resnet18_real_forward():
  model = get_model("resnet18", num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = model_helpers.fake_variables(model, x)
  assert set(variables) == {"params", "batch_stats"}

  @jax.jit
  def fwd(variables, x):
    logits, feats, state = apply_with_features(
        model, variables, x, train=True, mutable=["batch_stats"])
    return logits, feats, state, model.apply(variables, x, train=False)

  logits, feats, state, eval_logits = fwd(variables, x)
  assert logits.shape == eval_logits.shape == (2, 10)
  assert np.isfinite(np.asarray(logits)).all()
  assert np.isfinite(np.asarray(eval_logits)).all()
  assert {k: v.shape for k, v in feats.items()} == {
      "stem": (2, 16, 16, 64), "layer1": (2, 8, 8, 64), "layer2": (2, 4, 4, 128),
      "layer3": (2, 2, 2, 256), "layer4": (2, 1, 1, 512), "pre_logits": (2, 512)}
  new_mean = state["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(new_mean, variables["batch_stats"]["bn1"]["mean"])
  assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
