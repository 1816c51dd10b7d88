"""Model-test helpers: output shapes and host-filled variables, no init compile."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.models import apply_with_features, get_model


@functools.lru_cache(maxsize=None)
def shapes(name, num_classes, size):
  """(logits shape, {feature: shape}) via jax.eval_shape only."""
  model = get_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  logits, feats, _ = jax.eval_shape(
      lambda v, x: apply_with_features(model, v, x, train=False), v, x)
  return logits.shape, {k: f.shape for k, f in feats.items()}


def fake_variables(model, x, seed=0):
  """Variables shaped by eval_shape(init), filled on the host with numpy.

  Avoids compiling flax's random initialisers (slow on a small CPU); the
  forward pass under test is unaffected. Kernels ~ He-normal, biases/means 0,
  BN scales/vars 1. The 'features' collection that init returns is dropped.
  """
  abstract = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  rng = np.random.RandomState(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.randn(*s.shape) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
    if name in ("scale", "var"):
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(
      fill, {k: v for k, v in abstract.items() if k != "features"})
