"""The zoo: model names -> Flax classifiers, and the helpers every model
shares (init, shapes, parameter counts, features). See kd_jax.models for
the conventions."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.models import cifar_mobile
from kd_jax.models import cifar_resnet
from kd_jax.models import cifar_vgg
from kd_jax.models import ghostnet
from kd_jax.models import keras_apps
from kd_jax.models import mobilenet
from kd_jax.models import plain_cnn
from kd_jax.models import resnet
from kd_jax.models import shufflenet
from kd_jax.models import small
from kd_jax.models import vgg
from kd_jax.models import wrn

# name -> constructor(num_classes, **kw) -> flax.linen.Module
MODELS: dict[str, Callable[..., Any]] = {
    "mlp": small.MLP,
    "mlp_1200x2": small.MLP1200x2,
    "mlp_800x2": small.MLP800x2,
    "mlp_small": small.MLPSmall,
    "mlp_784x2": small.MLP784x2,
    "cnn_mnist": small.CNNMnist,
    "tiny_cnn": small.TinyCNN,
    "simple_cnn": small.SimpleCNN,
}


# Families in their own files add their names.
for _family in (vgg, resnet, mobilenet, shufflenet, ghostnet, keras_apps,
                cifar_resnet, wrn, cifar_vgg, cifar_mobile, plain_cnn):
  MODELS.update(_family.MODELS)


class UnknownModelError(ValueError):
  pass


def get_model(name: str, *, num_classes: int, **kw):
  if name not in MODELS:
    raise UnknownModelError(
        f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
  return MODELS[name](num_classes=num_classes, **kw)


VARIABLE_COLLECTIONS = ("params", "batch_stats")


def init(model, rng, image_size: int, channels: int = 3) -> dict:
  """{'params': ..., ['batch_stats': ...]}: the model's persistent variables
  (sown 'features' are per-call outputs and are dropped)."""
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  variables = model.init(rng, x, train=False)
  return {k: variables[k] for k in VARIABLE_COLLECTIONS if k in variables}


def init_shapes(name: str, num_classes: int, image_size: int, channels: int = 3):
  """Variable shapes from `jax.eval_shape` (no real init: cheap for VGG16)."""
  model = get_model(name, num_classes=num_classes)
  return jax.eval_shape(
      lambda: init(model, jax.random.PRNGKey(0), image_size, channels))


def count_params(name: str, num_classes: int = 1000, image_size: int = 224) -> int:
  """Trainable parameters (the `params` collection; BN running stats excluded)."""
  shapes = init_shapes(name, num_classes, image_size)
  return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes["params"])))


def feature_shapes(name: str, num_classes: int, image_size: int) -> dict:
  """{feature name: shape} of one forward pass at batch 1 (no real init)."""
  return dict(_feature_shapes(name, num_classes, image_size))


@functools.lru_cache(maxsize=256)
def _feature_shapes(name: str, num_classes: int, image_size: int) -> tuple:
  # Cached: config validation asks for the same models' features once per
  # study cell, and tracing a deep ResNet takes seconds.
  model = get_model(name, num_classes=num_classes)
  like = init_shapes(name, num_classes, image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  feats = jax.eval_shape(
      lambda v, x: apply_with_features(model, v, x, train=False)[1], like, x)
  return tuple((k, tuple(v.shape)) for k, v in sorted(feats.items()))


def apply_with_features(model, variables, x, *, train: bool, mutable=(),
                        rngs=None):
  """One forward pass returning (logits, {feature_name: array}, new_state).

  `mutable` lists extra collections to update (e.g. ('batch_stats',) in
  training); `new_state` holds them (empty dict if none). `rngs` (e.g.
  {'dropout': key}) is needed in training by models with dropout.
  """
  logits, state = model.apply(
      variables, x, train=train, mutable=["features", *mutable], rngs=rngs)
  state = dict(state)
  sown = state.pop("features", {})
  feats = {k: v[-1] for k, v in flatten_sown(sown).items()}
  return logits, feats, state


def flatten_sown(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, tuple):
      out[prefix + k] = v
    else:
      out.update(flatten_sown(v, prefix + k + "/"))
  return out


def bn_before_relu(model, variables) -> dict:
  """{pre-ReLU feature ('<stage>_preact'): (gamma_C, beta_C)} of the
  BatchNorm feeding it (`model.preact_bn()`, where the family declares
  one): the Gaussian OFD's margin assumes of the feature. {} for a model
  without one."""
  paths = model.preact_bn() if hasattr(model, "preact_bn") else {}
  out = {}
  for feature, path in paths.items():
    node = variables["params"]
    for name in path:
      node = node[name]
    out[feature] = (node["scale"], node["bias"])
  return out


def head_mask(name: str, num_classes: int, image_size: int) -> dict:
  """Variables tree of bools: True for the leaves whose shape depends on the
  class count (the classifier head), which a new task re-initialises."""
  a = init_shapes(name, num_classes, image_size)
  b = init_shapes(name, num_classes + 1, image_size)
  return jax.tree.map(lambda x, y: x.shape != y.shape, a, b)


def module_feature_shapes(module, variables, image_size) -> dict:
  """{feature name: shape} of `module` with `variables` (arrays or
  ShapeDtypeStructs) at batch 1, without computing anything."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  feats = jax.eval_shape(lambda v, x: apply_with_features(
      module, v, x, train=False)[1], variables, x)
  return {k: tuple(v.shape) for k, v in feats.items()}
