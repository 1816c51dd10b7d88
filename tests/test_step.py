"""The pure train step: CTKD's curriculum inside the step, the registry's
parts, and a vmapped step equal to plain steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib, data, methods, models, stage, step
from tests import helpers


def _setup(method, **overrides):
  c = helpers.tiny_config(f"dataset=digits,method={method}",
                          scratch_baseline=False, **overrides)
  ds = data.load(c)
  teacher = models.get_model("mlp_small", num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), c.dataset.image_size)
  run = stage.Stage(c, role="student", model_name=c.student.name,
                    method=method, stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds,
                    mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]),
                                           ("data",)),
                    teacher=step.Frozen(teacher, t_vars),
                    peers=config_lib.peers(c))
  tx, state = run.init_state()
  batch = next(data.train_batches(ds.train, global_batch=c.batch_size, seed=0,
                                  epoch=0, num_steps=1, image_size=28))
  return c, run, tx, state, batch, t_vars


@pytest.mark.parametrize("lam,moves", [(0.0, False), (0.7, True)])
def test_ctkd_temperature_follows_the_curriculum_inside_the_step(lam, moves):
  c, run, tx, state, batch, t_vars = _setup(
      "ctkd", **{"kd.lambda_min": lam, "kd.lambda_max": lam})
  train_step = jax.jit(step.make_train_step(run.spec(), tx))
  new, m = train_step(state, batch, step.hyperparams(c), t_vars)
  moved = float(new.params["temperature"]) != float(state.params["temperature"])
  assert moved is moves
  assert float(m["finite"]) == 1.0


def test_registry_parts_are_in_the_state():
  for name, want in (("ctkd", ()), ("ctkd_instance", ("hidden", "out"))):
    _, _, _, state, _, _ = _setup(name)
    assert methods.get(name).learns_temperature
    t = state.params["temperature"]
    assert (tuple(sorted(t)) if isinstance(t, dict) else ()) == want
  _, _, _, state, _, _ = _setup("dml")
  assert set(state.params) == {"student", "peer1"}


@pytest.mark.parametrize("mixed", [False, True])
def test_vmapped_step_equals_plain_steps(mixed):
  c, run, tx, state, batch, t_vars = _setup("vanilla", mixed_precision=mixed)
  spec = run.spec()
  train_step = step.make_train_step(spec, tx)
  configs = [c.copy_and_resolve_references() for _ in range(2)]
  configs[1].kd.temperature, configs[1].kd.alpha, configs[1].seed = 2.0, 0.9, 3
  plain = [jax.jit(train_step)(state, batch, step.hyperparams(k), t_vars)
           for k in configs]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), state, state)
  vm_state, vm_metrics = jax.jit(jax.vmap(train_step, in_axes=(0, None, 0, None)))(
      stacked, batch, step.stack_hyperparams(configs), t_vars)
  for i, (p_state, p_metrics) in enumerate(plain):
    for a, b in zip(jax.tree.leaves(p_state),
                    jax.tree.leaves(jax.tree.map(lambda x: x[i], vm_state))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_metrics["loss"], vm_metrics["loss"][i],
                               rtol=1e-5)
  assert float(plain[0][1]["loss"]) != float(plain[1][1]["loss"])
