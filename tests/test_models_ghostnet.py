"""GhostNet (timm ghostnet_100 layout): param count, shapes, real forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import MODELS, apply_with_features, count_params, get_model

NAME = "ghostnet_100"
# Derived by hand from timm's ghostnet_100 definition (see ghostnet.py
# docstring; timm's benchmark csv lists 5.18M).
GHOSTNET_100_PARAMS = 5_182_508
FEATURES_224 = {
    "stage1": (1, 112, 112, 16),
    "stage2": (1, 56, 56, 24),
    "stage3": (1, 28, 28, 40),
    "stage4": (1, 14, 14, 112),
    "stage5": (1, 7, 7, 960),
    "pre_logits": (1, 960),
    "hidden": (1, 1280),
}

# XLA:CPU spends most of its compile time on LLVM code generation; level 0
# roughly halves it. Same program and numerics, less optimised machine code.
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def model():
  return get_model(NAME, num_classes=10)


@pytest.fixture(scope="module")
def abstract_vars(model):
  """`model.init`'s variable shapes (they do not depend on the image size)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return {c: v[c] for c in ("params", "batch_stats")}


def _numpy_variables(abstract_vars, seed=0):
  """Variables with `model.init`'s exact tree and shapes, filled by numpy.

  A jitted `model.init` of GhostNet costs 15-60 s of XLA:CPU compile time (one
  RNG fusion per kernel), so the fast test fills the `eval_shape(init)` tree
  directly: kernels ~ N(0, 1/fan_in), BN scale 1, biases 0, running mean 0 /
  var 1. `test_real_init` (marked slow: `pytest -m slow`) runs the real init.
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    # Plain numpy arrays: eager jnp.ones/zeros would compile one tiny XLA
    # program per distinct shape.
    if leaf == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return rng.normal(0, fan_in ** -0.5, s.shape).astype(s.dtype)
    if leaf in ("scale", "var"):
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract_vars)


def test_registered():
  assert NAME in MODELS


def test_param_count_matches_timm():
  assert count_params(NAME, 1000, 224) == GHOSTNET_100_PARAMS


@pytest.mark.parametrize("size", [28, 32, 112])
def test_logits_shape(model, abstract_vars, size):
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       abstract_vars, x)
  assert out.shape == (2, 10)


def test_feature_shapes_224(model, abstract_vars):
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  logits, feats, _ = jax.eval_shape(
      lambda v, x: apply_with_features(model, v, x, train=False), abstract_vars, x)
  assert logits.shape == (1, 10)
  assert {k: v.shape for k, v in feats.items()} == FEATURES_224


def test_real_forward_train_and_eval(model, abstract_vars):
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), np.float32)
  variables = _numpy_variables(abstract_vars)

  def run(variables, x, k_drop):
    logits_e, feats_e, _ = apply_with_features(model, variables, x, train=False)
    # Dropout is active when train=True and needs rngs={'dropout': key}.
    logits_t, state = model.apply(variables, x, train=True, rngs={"dropout": k_drop},
                                  mutable=["features", "batch_stats"])
    state = dict(state)
    feats_t = {k: v[-1] for k, v in state.pop("features").items()}
    return logits_e, feats_e, logits_t, feats_t, state

  # Eval forward and train forward in one jitted program (one compile).
  logits_e, feats_e, logits_t, feats_t, state = jax.jit(
      run, compiler_options=FAST_COMPILE)(variables, x, jax.random.PRNGKey(2))

  assert logits_e.shape == logits_t.shape == (2, 10)
  for a in (logits_e, logits_t, *feats_e.values()):
    assert np.all(np.isfinite(np.asarray(a)))
  assert set(feats_e) == set(FEATURES_224)
  assert feats_e["stage5"].shape == (2, 1, 1, 960)  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
  np.testing.assert_allclose(np.asarray(feats_e["pre_logits"]),
                             np.asarray(feats_e["stage5"]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)

  # train=True updated the BatchNorm running statistics.
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(state["batch_stats"])
  assert len(old) == len(new) > 0
  assert any(not np.allclose(a, b) for a, b in zip(old, new))

  # Dropout(0.2) sits between `hidden` and the classifier in training: the
  # logits differ from classifier(hidden) without dropout ...
  w = np.asarray(variables["params"]["classifier"]["kernel"])
  b = np.asarray(variables["params"]["classifier"]["bias"])
  no_drop = np.asarray(feats_t["hidden"]) @ w + b
  assert not np.allclose(no_drop, np.asarray(logits_t), atol=1e-5)
  # ... while in eval the classifier sees `hidden` unchanged.
  np.testing.assert_allclose(np.asarray(feats_e["hidden"]) @ w + b,
                             np.asarray(logits_e), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 15-60 s of XLA:CPU compile
def test_real_init(model, abstract_vars):
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False),
                      compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0), x)
  variables = {c: variables[c] for c in ("params", "batch_stats")}
  assert (jax.tree.map(lambda a: a.shape, variables)
          == jax.tree.map(lambda a: a.shape, abstract_vars))
  for leaf in jax.tree.leaves(variables):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # PyTorch default init (as timm leaves it): U(+-1/sqrt(fan_in)) kernels
  # and biases; BN scale one, bias zero.
  params = variables["params"]
  for kernel in (params["conv_head"]["kernel"], params["last_conv"]["kernel"],
                 params["classifier"]["kernel"]):
    kernel = np.asarray(kernel)
    bound = np.prod(kernel.shape[:-1]) ** -0.5
    assert np.abs(kernel).max() <= bound
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.1
  bias = np.asarray(params["classifier"]["bias"])
  assert np.abs(bias).max() <= 1280 ** -0.5 and bias.std() > 0
  assert np.all(np.asarray(params["bn1"]["scale"]) == 1)
  assert not np.asarray(params["bn1"]["bias"]).any()
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False),
                   compiler_options=FAST_COMPILE)(variables, x)
  assert logits.shape == (2, 10)
