"""kd_jax/models/fast_ops.py against lax / flax references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kd_jax.models import fast_ops

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_depthwise(x, w, stride, pad):
  return lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC,
      feature_group_count=x.shape[-1], precision=lax.Precision.HIGHEST)


def fast_depthwise(x, w, stride, pad):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  return fast_ops.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=dn,
      feature_group_count=x.shape[-1])


# (batch, H, W, C), kernel, stride, padding: MobileNet/GhostNet/ShuffleNet
# shapes, odd sizes, a prime batch (chunking of the kernel gradient).
DEPTHWISE_CASES = [((4, 12, 12, 8), 3, 1, 1), ((4, 13, 11, 8), 3, 2, 1),
                   ((7, 9, 10, 6), 5, 2, 2), ((3, 14, 14, 16), 5, 1, 2),
                   ((2, 8, 8, 4), 3, 1, 0), ((64, 7, 7, 4), 3, 2, 1)]


@pytest.mark.parametrize("shape,k,stride,pad", DEPTHWISE_CASES)
def test_depthwise_matches_lax_values_and_gradients(shape, k, stride, pad):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (k, k, 1, shape[-1]))
  ref = lax_depthwise(x, w, stride, pad)
  got = jax.jit(fast_depthwise, static_argnums=(2, 3))(x, w, stride, pad)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, ref.shape)

  def grads(f):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w, stride, pad) * g),
                            argnums=(0, 1)))(x, w)
  for a, b in zip(grads(fast_depthwise), grads(lax_depthwise)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_gradients_under_vmap_match_per_cell():
  """The vectorised sweep vmaps the step over cells' weights and inputs."""
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 9, 9, 6))
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 1, 6))

  def loss(x, w):
    return jnp.sum(jnp.tanh(fast_depthwise(x, w, 2, 1)))
  vmapped = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(x, w)
  for i in range(3):
    ref = jax.grad(lambda x, w: jnp.sum(jnp.tanh(lax_depthwise(x, w, 2, 1))),
                   argnums=(0, 1))(x[i], w[i])
    for a, b in zip(vmapped, ref):
      np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)


def test_other_convolutions_go_to_lax_unchanged():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 8))
  for w_shape, groups in (((3, 3, 8, 16), 1), ((3, 3, 2, 8), 4),
                          ((3, 3, 1, 16), 8)):  # dense, grouped, multiplier 2
    w = jax.random.normal(jax.random.PRNGKey(1), w_shape)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    args = ((1, 1), ((1, 1), (1, 1)))
    got = fast_ops.conv_general_dilated(x, w, *args, dimension_numbers=dn,
                                        feature_group_count=groups)
    ref = lax.conv_general_dilated(x, w, *args, dimension_numbers=dn,
                                   feature_group_count=groups)
    np.testing.assert_array_equal(got, ref)


POOL_CASES = [((3, 8, 8, 5), (2, 2), (2, 2), "VALID"),
              ((3, 7, 9, 5), (2, 2), (2, 2), "VALID"),  # floor mode
              ((2, 6, 6, 3), (1, 2), (1, 2), "VALID"),
              ((3, 16, 16, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet stem
              ((2, 15, 13, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
              ((2, 12, 12, 3), (12, 12), (1, 1), "VALID")]  # 144 taps: int32 index


@pytest.mark.parametrize("shape,window,strides,padding", POOL_CASES)
def test_max_pool_matches_flax_values_and_select_and_scatter_gradient(
    shape, window, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  # Ties: many equal values (as after a ReLU), so the gradient's choice among
  # equal maxima matters; select-and-scatter gives it to the first.
  x = jnp.maximum(jnp.round(x * 2) / 2, 0.0)
  ref = nn.max_pool(x, window, strides=strides, padding=padding)
  got = fast_ops.max_pool(x, window, strides=strides, padding=padding)
  np.testing.assert_array_equal(got, ref)
  g = jax.random.normal(jax.random.PRNGKey(1), ref.shape)
  grad_ref = jax.grad(lambda x: jnp.sum(
      nn.max_pool(x, window, strides=strides, padding=padding) * g))(x)
  grad_got = jax.jit(jax.grad(lambda x: jnp.sum(
      fast_ops.max_pool(x, window, strides=strides, padding=padding) * g)))(x)
  np.testing.assert_array_equal(grad_got, grad_ref)


def test_max_pool_gradient_goes_to_the_first_maximum_by_hand():
  x = jnp.array([[1., 3.], [3., 0.]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: fast_ops.max_pool(x, (2, 2), (2, 2)).sum())(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], [[0., 1.], [0., 0.]])
