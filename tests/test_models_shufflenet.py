"""ShuffleNet V2 (torchvision layout): param counts, shapes, real forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import MODELS, apply_with_features, count_params, get_model
from kd_jax.models.shufflenet import channel_shuffle

# torchvision ShuffleNet_V2_X*_Weights.meta["num_params"].
TORCHVISION_PARAMS = {
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
}
STAGE_OUT_CHANNELS = {
    "shufflenet_v2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenet_v2_x1_0": (24, 116, 232, 464, 1024),
}
NAMES = sorted(TORCHVISION_PARAMS)

# XLA:CPU spends most of its compile time on LLVM code generation (mostly
# the per-kernel RNG of `init`); level 0 roughly halves it. Same program and
# numerics, less optimised machine code.
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}

_ABSTRACT = {}


def _abstract_vars(name):
  """`model.init`'s variable shapes (they do not depend on the image size)."""
  if name not in _ABSTRACT:
    model = get_model(name, num_classes=10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    v = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    _ABSTRACT[name] = (model, {c: v[c] for c in ("params", "batch_stats")})
  return _ABSTRACT[name]


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_torchvision(name):
  assert name in MODELS
  assert count_params(name, 1000, 224) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [28, 32, 112])
def test_logits_shape(name, size):
  model, abstract_vars = _abstract_vars(name)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       abstract_vars, x)
  assert out.shape == (2, 10)


def test_channel_shuffle_matches_torch_order():
  # torch: view(B, 2, C/2, H, W).transpose(1, 2) -> [0, 4, 1, 5, 2, 6, 3, 7]
  x = np.arange(8.0, dtype=np.float32).reshape(1, 1, 1, 8)
  np.testing.assert_array_equal(
      np.asarray(channel_shuffle(x, 2)).ravel(), [0, 4, 1, 5, 2, 6, 3, 7])


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes_224(name):
  model, abstract_vars = _abstract_vars(name)
  chs = STAGE_OUT_CHANNELS[name]
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  logits, feats, _ = jax.eval_shape(
      lambda v, x: apply_with_features(model, v, x, train=False), abstract_vars, x)
  assert logits.shape == (1, 10)
  assert {k: v.shape for k, v in feats.items()} == {
      "stage1": (1, 112, 112, chs[0]),
      "stage2": (1, 56, 56, chs[0]),
      "stage3": (1, 28, 28, chs[1]),
      "stage4": (1, 14, 14, chs[2]),
      "stage5": (1, 7, 7, chs[4]),
      "pre_logits": (1, chs[4]),
  }


def test_real_forward_train_and_eval():
  model = get_model("shufflenet_v2_x0_5", num_classes=10)
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), np.float32)

  def run(key, x):
    k_init, k_drop = jax.random.split(key)
    variables = model.init(k_init, x, train=False)
    variables = {c: variables[c] for c in ("params", "batch_stats")}
    logits_e, feats_e, _ = apply_with_features(model, variables, x, train=False)
    # ShuffleNet V2 has no dropout; a 'dropout' rng is accepted (and unused)
    # so a trainer can pass it to every model alike.
    logits_t, state = model.apply(variables, x, train=True,
                                  rngs={"dropout": k_drop}, mutable=["batch_stats"])
    return variables, logits_e, feats_e, logits_t, state

  # Real init, eval forward and train forward in one jitted program.
  variables, logits_e, feats_e, logits_t, state = jax.jit(
      run, compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0), x)

  assert (jax.tree.map(lambda a: a.shape, variables)
          == jax.tree.map(lambda a: a.shape, _abstract_vars("shufflenet_v2_x0_5")[1]))
  assert logits_e.shape == logits_t.shape == (2, 10)
  for a in (logits_e, logits_t, *feats_e.values(), *jax.tree.leaves(variables)):
    assert np.all(np.isfinite(np.asarray(a)))
  assert feats_e["stage5"].shape == (2, 1, 1, 1024)  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
  # pre_logits is the pooled stage5 map and feeds fc directly.
  np.testing.assert_allclose(np.asarray(feats_e["pre_logits"]),
                             np.asarray(feats_e["stage5"]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  fc = variables["params"]["fc"]
  np.testing.assert_allclose(
      np.asarray(feats_e["pre_logits"]) @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"]),
      np.asarray(logits_e), rtol=1e-4, atol=1e-5)

  # PyTorch default init (as torchvision leaves it): U(+-1/sqrt(fan_in)).
  for kernel in (variables["params"]["conv5"]["kernel"], fc["kernel"]):
    kernel = np.asarray(kernel)
    bound = np.prod(kernel.shape[:-1]) ** -0.5
    assert np.abs(kernel).max() <= bound
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.1
  assert np.abs(np.asarray(fc["bias"])).max() <= 1024 ** -0.5

  # train=True updated the BatchNorm running statistics.
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(state["batch_stats"])
  assert len(old) == len(new) > 0
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  # Batch statistics (train) vs running averages (eval) give different logits.
  assert not np.allclose(np.asarray(logits_e), np.asarray(logits_t))
