"""MobileNet V2/V3 against torchvision's reference architecture (shape-level).

Cheap by design: shapes come from jax.eval_shape (one trace per model and
size, cached); the real jitted forward runs at 32x32 with batch 2 on variables
filled on the host, because compiling flax's random initialisers for ~140
parameter arrays takes tens of seconds on a small CPU. The real `init` is
exercised by a test marked `slow`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from kd_jax.models import (MODELS, apply_with_features, count_params,
                           flatten_sown, get_model)
from kd_jax.models import mobilenet
from tests import model_helpers

NAMES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")

# torchvision's parameter counts at 1000 classes (independent of input size).
TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
}

# channels of stage1..stage5 and of the pooled / hidden vectors
STAGE_CHANNELS = {
    "mobilenet_v2": (16, 24, 32, 96, 1280),
    "mobilenet_v3_small": (16, 16, 24, 48, 576),
    "mobilenet_v3_large": (16, 24, 40, 112, 960),
}
HIDDEN = {"mobilenet_v3_small": 1024, "mobilenet_v3_large": 1280}


@functools.lru_cache(maxsize=None)
def _shapes(name, num_classes, size, batch=2):
  """(logits, variables, features) as ShapeDtypeStructs from one init trace.

  `init` runs the forward pass too, with every collection mutable, so its
  'features' collection holds exactly what `apply_with_features` returns.
  """
  model = get_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  logits, variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False),
      x)
  variables = dict(variables)
  feats = {k: v[-1] for k, v in flatten_sown(variables.pop("features")).items()}
  return logits, variables, feats


def test_registered():
  for n in NAMES:
    assert n in MODELS
    assert MODELS[n] is mobilenet.MODELS[n]


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_torchvision(name):
  assert count_params(name, 1000, 224) == TORCHVISION_PARAMS[name]


def test_make_divisible_like_torchvision():
  # SE squeeze widths: make_divisible(expanded // 4, 8)
  assert [mobilenet.make_divisible(e // 4, 8)
          for e in (16, 72, 96, 120, 144, 240, 288, 480, 576, 672, 960)] == [
              8, 24, 24, 32, 40, 64, 72, 120, 144, 168, 240]


def test_se_squeeze_and_bias_layout():
  _, variables, _ = _shapes("mobilenet_v3_large", 10, 32)
  params = variables["params"]
  squeezes = [params[f"block{i}"]["se"]["fc1"]["kernel"].shape[-1]
              for i in range(1, 16) if "se" in params[f"block{i}"]]
  assert squeezes == [24, 32, 32, 120, 168, 168, 240, 240]
  # convs followed by BN carry no bias
  assert "bias" not in params["stem"]["conv"]
  assert "bias" not in params["block2"]["expand"]["conv"]
  assert "expand" not in params["block1"]  # expanded == input: no expand conv
  # BN running stats are not params
  assert "mean" in variables["batch_stats"]["stem"]["bn"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", (28, 32, 112))
def test_logits_shape(name, size):
  logits, _, feats = _shapes(name, 10, size)
  assert logits.shape == (2, 10)
  # torch's explicit (k-1)//2 padding: each stride-2 conv gives ceil(H/2)
  h = size
  for i in range(1, 6):
    h = -(-h // 2)
    assert feats[f"stage{i}"].shape[1:3] == (h, h)


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes(name):
  _, _, feats = _shapes(name, 10, 112)
  sides = (56, 28, 14, 7, 4)  # ceil(112 / 2**k), as torch's padded convs give
  expected = {f"stage{i + 1}": (2, h, h, c)
              for i, (h, c) in enumerate(zip(sides, STAGE_CHANNELS[name]))}
  expected["pre_logits"] = (2, STAGE_CHANNELS[name][-1])
  if name in HIDDEN:
    expected["hidden"] = (2, HIDDEN[name])
  assert {k: v.shape for k, v in feats.items()} == expected


def _check_forward(model_name, model, variables, x):
  @jax.jit
  def run(variables, x, key):
    eval_logits, feats, _ = apply_with_features(model, variables, x, train=False)
    # apply_with_features passes no rngs, and train-mode dropout needs one
    train_logits, state = model.apply(
        variables, x, train=True, mutable=["batch_stats"],
        rngs={"dropout": key})
    return eval_logits, feats, train_logits, state

  eval_logits, feats, train_logits, state = run(
      variables, x, jax.random.PRNGKey(2))
  assert {k: v.shape for k, v in feats.items()} == {
      k: v.shape for k, v in _shapes(model_name, 10, 32)[2].items()}
  assert eval_logits.shape == train_logits.shape == (2, 10)
  assert np.all(np.isfinite(eval_logits)) and np.all(np.isfinite(train_logits))
  # training mode (batch statistics + dropout) differs from eval
  assert not np.allclose(eval_logits, train_logits)
  # only batch_stats come back, same structure, and the running stats moved
  assert set(state) == {"batch_stats"}
  old = flatten_dict(variables["batch_stats"])
  new = flatten_dict(state["batch_stats"])
  assert old.keys() == new.keys()
  assert all(old[k].shape == new[k].shape for k in old)
  # every running variance moves; a mean may legitimately stay ~0 (a linear
  # 1x1 conv of a zero-mean BN output has zero batch mean), so: any mean
  assert all(not np.allclose(old[k], new[k]) for k in old if k[-1] == "var")
  assert any(not np.allclose(old[k], new[k]) for k in old if k[-1] == "mean")


def test_real_forward_eval_and_train():
  model = get_model("mobilenet_v3_small", num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3), jnp.float32)
  variables = model_helpers.fake_variables(model, x)
  _check_forward("mobilenet_v3_small", model, variables, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_real_init_and_forward(name):
  model = get_model(name, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3), jnp.float32)
  variables = jax.jit(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
  variables = {k: v for k, v in variables.items() if k != "features"}
  # torchvision init: conv kaiming-normal fan_out, linear N(0, 0.01), bias 0
  stem = np.asarray(variables["params"]["stem"]["conv"]["kernel"])
  fan_out = stem.shape[0] * stem.shape[1] * stem.shape[3]
  assert abs(stem.std() / np.sqrt(2.0 / fan_out) - 1) < 0.25
  head = variables["params"]["head"]
  assert abs(np.asarray(head["kernel"]).std() / 0.01 - 1) < 0.1
  assert not np.asarray(head["bias"]).any()
  _check_forward(name, model, variables, x)


def test_dropout_needs_rng_only_in_train():
  model = get_model("mobilenet_v3_small", num_classes=10)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  _, variables, _ = _shapes("mobilenet_v3_small", 10, 32)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True,
                                            mutable=["batch_stats"]),
                   variables, x)
