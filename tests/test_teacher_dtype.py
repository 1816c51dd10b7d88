"""teacher.compute_dtype: the frozen teacher's forward in bfloat16 (live and
cached) gives float32 outputs within bf16 rounding of the float32 ones; the
float32 default is the plain forward, bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import sharding
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import teacher_cache
from tests import helpers

# bf16 keeps 8 significant bits (relative rounding 2^-8 per value); a few
# layers of it leave the logits within ~1e-2 of their scale.
RTOL = 2e-2


def _config(dtype, method="vanilla", **overrides):
  return helpers.tiny_config(f"dataset=digits,method={method}",
                             scratch_baseline=False,
                             **{"teacher.compute_dtype": dtype}, **overrides)


@pytest.fixture(scope="module")
def setup():
  c = _config("float32")
  ds = data.load(c)
  model = models.get_model("simple_cnn", num_classes=ds.num_classes)
  t_vars = models.init(model, jax.random.PRNGKey(3), c.dataset.image_size)
  x = step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(ds.train.images[:32]))
  return ds, model, t_vars, x


def _spec(dtype, model, **kw):
  c = _config(dtype)
  return step.make_spec(config_lib.read_specs(c), models.get_model("tiny_cnn", num_classes=10),
                        "vanilla", steps_per_epoch=1, teacher=model, **kw)


def _close_in_bf16(got, want):
  assert got.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(want)))
  err = float(jnp.max(jnp.abs(got - want)))
  assert err <= RTOL * scale, (err, scale)
  assert err > 0  # bf16 was really used


def test_float32_default_is_the_plain_forward_bit_for_bit(setup):
  _, model, t_vars, x = setup
  spec = _spec("float32", model)
  assert not spec.teacher_bf16
  got = jax.jit(lambda v, x: step.teacher_outputs(spec, v, x)[0])(t_vars, x)
  want = jax.jit(lambda v, x: model.apply(v, x, train=False))(t_vars, x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bf16_teacher_logits_and_features_are_float32_within_rounding(setup):
  _, model, t_vars, x = setup
  want = model.apply(t_vars, x, train=False)
  spec = _spec("bfloat16", model)
  assert spec.teacher_bf16
  logits, feats = jax.jit(lambda v, x: step.teacher_outputs(spec, v, x))(
      t_vars, x)
  assert feats is None
  _close_in_bf16(logits, want)
  layer = next(iter(models.apply_with_features(model, t_vars, x,
                                               train=False)[1]))
  spec = _spec("bfloat16", model, hint=("block1", layer))
  logits, feats = step.teacher_outputs(spec, t_vars, x)
  want_feat = models.apply_with_features(model, t_vars, x,
                                         train=False)[1][layer]
  _close_in_bf16(logits, want)
  _close_in_bf16(feats[layer], want_feat)


def test_bf16_teacher_in_the_train_step_keeps_a_float32_loss(setup):
  ds, model, t_vars, _ = setup
  mesh = sharding.make_mesh()
  losses = {}
  for dtype in ("float32", "bfloat16"):
    c = _config(dtype)
    run = stage.Stage(config_lib.read_specs(c), role="student", model_name=c.student.name,
                      method="vanilla", stage_dir="/nonexistent", num_epochs=1,
                      learning_rate=c.learning_rate, ds=ds, mesh=mesh,
                      teacher=step.Frozen(model, t_vars))
    tx, state = run.init_state()
    batch = next(data.train_batches(ds.train, global_batch=c.batch_size,
                                    seed=0, epoch=0, num_steps=1,
                                    image_size=c.dataset.image_size))
    new, m = jax.jit(step.make_train_step(run.spec(), tx))(
        state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
    assert m["loss"].dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new.params))
    losses[dtype] = float(m["loss"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=RTOL)


def test_cache_runs_the_teacher_in_its_dtype_under_its_own_key(setup):
  ds, model, t_vars, _ = setup
  teacher = step.Frozen(model, t_vars)
  mesh = sharding.make_mesh()
  c32, c16 = _config("float32"), _config("bfloat16")
  assert (teacher_cache.cache_key(config_lib.read_specs(c32), ds, "simple_cnn", teacher)
          != teacher_cache.cache_key(config_lib.read_specs(c16), ds, "simple_cnn", teacher))
  want = teacher_cache.compute_logits(config_lib.read_specs(c32), teacher, ds.val, mesh)
  x = step.Preprocess.from_spec(config_lib.data_spec(c32))(jnp.asarray(ds.val.images))
  np.testing.assert_allclose(want, model.apply(t_vars, x, train=False),
                             rtol=1e-5, atol=1e-5)
  got = teacher_cache.compute_logits(config_lib.read_specs(c16), teacher, ds.val, mesh)
  assert got.dtype == np.float32
  _close_in_bf16(jnp.asarray(got), jnp.asarray(want))


def test_a_bad_compute_dtype_is_a_one_line_error():
  c = _config("float16")
  with pytest.raises(config_lib.UserError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert "config.teacher.compute_dtype" in msg and "'float16'" in msg
  assert "bfloat16" in msg and "\n" not in msg
