"""Precise BatchNorm (train/precise_bn.py): the recomputed statistics equal
a NumPy re-computation of the per-batch statistics' mean, whatever the
layers' momentum, and they mend the short run whose running averages make
the model answer one class."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.train import pipeline as train
from kd_jax.train import precise_bn
from kd_jax.train import sharding
from tests import helpers


class _TwoBN(nn.Module):
  """Dense -> BN (flax momentum 0.9) -> relu -> Dense -> BN (0.999): the
  two momenta of the zoo's flax and Keras-style layers."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(6, name="d1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
    x = nn.relu(x)
    x = nn.Dense(3, name="d2")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.999,
                        name="bn2")(x)


def _numpy_stats(params, batches, eps=1e-5):
  """Each layer's (mean over batches of the batch mean, ... of the biased
  batch variance), the second layer fed with the first's train-mode
  (batch-normalised) output, as BatchNorm computes it in training."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  out = {"bn1": ([], []), "bn2": ([], [])}
  for x in batches:
    h = x.astype(np.float64) @ p["d1"]["kernel"] + p["d1"]["bias"]
    out["bn1"][0].append(h.mean(0))
    out["bn1"][1].append(h.var(0))
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + eps)
    h = np.maximum(h * p["bn1"]["scale"] + p["bn1"]["bias"], 0)
    h = h @ p["d2"]["kernel"] + p["d2"]["bias"]
    out["bn2"][0].append(h.mean(0))
    out["bn2"][1].append(h.var(0))
  return {k: (np.mean(m, 0), np.mean(v, 0)) for k, (m, v) in out.items()}


def test_recalibrated_statistics_are_the_mean_of_the_batch_statistics():
  rng = np.random.default_rng(0)
  model = _TwoBN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
  # Running averages far from the data: what a short run leaves behind.
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda a: a + 7.0, variables["batch_stats"])}
  batches = [(rng.normal(size=(16, 5)) * 3 + 2).astype(np.float32)
             for _ in range(4)]
  stats_fn = precise_bn.make_batch_stats_fn(
      model, lambda x: x.astype(jnp.float32))
  got = precise_bn.recalibrate(stats_fn, variables, iter(batches),
                               sharding.make_mesh())
  want = _numpy_stats(variables["params"], batches)
  for layer, (mean, var) in want.items():
    np.testing.assert_allclose(got["batch_stats"][layer]["mean"], mean,
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(got["batch_stats"][layer]["var"], var,
                               rtol=2e-4, atol=2e-4)
  assert got["params"] is variables["params"]  # weights untouched


def test_no_batches_or_no_batchnorm_leaves_the_variables():
  model = _TwoBN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
  fn = precise_bn.make_batch_stats_fn(model, lambda x: x)
  assert precise_bn.recalibrate(fn, variables, iter(()),
                                sharding.make_mesh()) is variables
  plain = {"params": variables["params"]}
  assert precise_bn.recalibrate(fn, plain, iter(()),
                                sharding.make_mesh()) is plain


def _collapsing_run(tmp_path, capsys, name, **overrides):
  c = helpers.tiny_config("dataset=digits,method=none,student=resnet8",
                          num_epochs=1, max_steps_per_epoch=8,
                          **{"dataset.eval_limit": 400}, **overrides)
  res = train.train_and_evaluate(c, str(tmp_path / name))
  out = capsys.readouterr().out
  warnings = [l for l in out.splitlines()
              if l.startswith("kd_jax: warning: [student]")]
  return res["stages"]["student"], warnings, out


def test_precise_bn_mends_the_run_that_answers_one_class(tmp_path, capsys):
  """Eight steps of resnet8 answer one class in inference mode (the running
  averages still describe the initialisation); with the statistics
  recomputed on eight training batches the same weights classify, and the
  warning names the option."""
  plain, warned, _ = _collapsing_run(tmp_path, capsys, "plain")
  assert len(warned) == 1 and "bn_recalibration_steps=50" in warned[0]
  fixed, warned_fixed, out = _collapsing_run(
      tmp_path, capsys, "precise", bn_recalibration_steps=8)
  assert "precise BN: BatchNorm statistics recomputed over 8" in out
  assert warned_fixed == []
  assert fixed["test"]["accuracy"] > plain["test"]["accuracy"] + 0.2


def test_bad_value_is_one_line():
  c = helpers.tiny_config("dataset=digits,method=none",
                          bn_recalibration_steps=-1)
  with pytest.raises(config_lib.UserError,
                     match=r"bn_recalibration_steps=-1 must be >= 0"):
    config_lib.validate(c)
