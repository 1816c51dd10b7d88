"""BatchNorm statistics: every training path (live or cached teacher,
vmapped sweep cell, fine-tuning's phases) updates them as BatchNorm does;
precise BN (train/precise_bn.py) recomputes them as a NumPy re-computation
of the per-batch statistics' mean, whatever the layers' momentum, and
mends the short run whose running averages make the model answer one
class."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import pipeline as train
from kd_jax.train import precise_bn
from kd_jax.train import sharding
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import sweep
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


def _one_step_setup(frozen_epochs=0):
  c = helpers.tiny_config("dataset=digits,method=vanilla,student=resnet8")
  ds = data.load(c)
  teacher = models.get_model("mlp_small", num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), c.dataset.image_size)
  specs = config_lib.read_specs(c)
  run = stage.Stage(specs, role="student", model_name="resnet8",
                    method="vanilla", stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds,
                    mesh=sharding.make_mesh(), frozen_epochs=frozen_epochs,
                    teacher=step.Frozen(teacher, t_vars))
  tx, state = run.init_state()
  batch = next(data.train_batches(ds.train, global_batch=c.batch_size, seed=0,
                                  epoch=0, num_steps=1, image_size=28))
  hp = step.hyperparams(specs)
  return run, tx, state, batch, hp, t_vars, teacher


def _expected_stats(run, state, batch):
  """The student's BatchNorm update on this batch, applied directly."""
  x = run.spec().preprocess(jnp.asarray(batch["image"]))
  _, new = run.model.apply({"params": state.params["student"],
                            "batch_stats": state.batch_stats["student"]},
                           x, train=True, mutable=["batch_stats"])
  return new["batch_stats"]


def _assert_close(got, want):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.parametrize("path", ["plain", "cached_teacher", "vmapped"])
def test_every_training_path_updates_the_batchnorm_statistics(path):
  """A live teacher, cached teacher logits and a vmapped sweep cell each
  move the student's running statistics exactly as BatchNorm does on the
  step's batch."""
  run, tx, state, batch, hp, t_vars, teacher = _one_step_setup()
  want = _expected_stats(run, state, batch)
  fn = step.make_train_step(run.spec(), tx)
  if path == "cached_teacher":
    x = run.spec().preprocess(jnp.asarray(batch["image"]))
    batch = {**batch, "teacher_logits": teacher.apply(t_vars, x, train=False)}
    new, _ = jax.jit(fn)(state, batch, hp, None)
  elif path == "vmapped":
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    hps = jax.tree.map(lambda a: jnp.stack([a, a]), hp)
    new_k, _ = jax.jit(sweep.make_sweep_step(run.spec(), tx))(
        states, hps, jnp.asarray([True, True]), batch, t_vars)
    new = jax.tree.map(lambda a: a[1], new_k)
  else:
    new, _ = jax.jit(fn)(state, batch, hp, t_vars)
  _assert_close(new.batch_stats["student"], want)


def test_fine_tuning_keeps_statistics_frozen_then_updates_them():
  """The head-only phase runs the backbone in inference mode (its
  statistics stay, as a frozen pretrained backbone's should); the full
  phase updates them."""
  run, _, state, batch, hp, t_vars, _ = _one_step_setup(frozen_epochs=1)
  frozen_fn, full_fn = run.step_fns(run.spec(), sharding.replicated(run.mesh))
  want = _expected_stats(run, state, batch)
  before = jax.device_get(state.batch_stats["student"])
  frozen, _ = frozen_fn(state, batch, hp, t_vars)
  _assert_close(frozen.batch_stats["student"], before)
  run, _, state, batch, hp, t_vars, _ = _one_step_setup(frozen_epochs=1)
  _, full_fn = run.step_fns(run.spec(), sharding.replicated(run.mesh))
  full, _ = full_fn(state, batch, hp, t_vars)
  _assert_close(full.batch_stats["student"], want)
