"""The pure train step: CTKD's curriculum inside the step, the registry's
parts, and a vmapped step equal to plain steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.distill import methods
from kd_jax.train import stage
from kd_jax.train import step
from tests import helpers


def _setup(method, **overrides):
  c = helpers.tiny_config(f"dataset=digits,method={method}",
                          scratch_baseline=False, **overrides)
  ds = data.load(c)
  teacher = models.get_model("mlp_small", num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), c.dataset.image_size)
  run = stage.Stage(config_lib.read_specs(c), role="student", model_name=c.student.name,
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
  new, m = train_step(state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
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
  plain = [jax.jit(train_step)(state, batch, step.hyperparams(config_lib.read_specs(k)), t_vars)
           for k in configs]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), state, state)
  vm_state, vm_metrics = jax.jit(jax.vmap(train_step, in_axes=(0, None, 0, None)))(
      stacked, batch, step.stack_hyperparams([config_lib.read_specs(k) for k in configs]), t_vars)
  for i, (p_state, p_metrics) in enumerate(plain):
    # The vmapped program rounds in another fusion order; Adam normalises
    # the few near-zero gradients that differ up to a step's size (~1e-5).
    for a, b in zip(jax.tree.leaves(p_state),
                    jax.tree.leaves(jax.tree.map(lambda x: x[i], vm_state))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p_metrics["loss"], vm_metrics["loss"][i],
                               rtol=1e-5)
  assert float(plain[0][1]["loss"]) != float(plain[1][1]["loss"])


def test_sgd_with_nesterov_momentum_matches_numpy():
  """config.nesterov: v <- mu v + g, update = -lr (g + mu v) (PyTorch's
  SGD(nesterov=True)); refused with Adam."""
  c = config_lib.base_config()
  c.optimizer, c.nesterov, c.momentum, c.lr_schedule = "sgd", True, 0.9, "constant"
  tx = step.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.1, num_epochs=1,
                           steps_per_epoch=10, ctkd=False)
  params = {"student": jnp.zeros(3)}
  opt_state, v = tx.init(params), np.zeros(3)
  for g in (np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -1.0])):
    updates, opt_state = tx.update({"student": jnp.asarray(g, jnp.float32)},
                                   opt_state, params)
    v = 0.9 * v + g
    np.testing.assert_allclose(updates["student"], -0.1 * (g + 0.9 * v),
                               rtol=1e-6)
  c.optimizer = "adam"
  with pytest.raises(config_lib.UserError, match="config.nesterov=True needs "
                     "config.optimizer='sgd'"):
    config_lib.validate(c)


def test_step_lr_schedule_decays_at_the_given_epochs():
  # The CIFAR benchmark's recipe: x0.1 at epochs 150, 180 and 210 of 240.
  c = config_lib.base_config()
  c.optimizer, c.lr_schedule, c.num_epochs = "sgd", "step", 240
  c.lr_decay_epochs = "150,180,210"
  config_lib.validate(c)
  lr = step.lr_schedule(config_lib.optimizer_spec(c), learning_rate=0.05, num_epochs=240,
                            steps_per_epoch=10)
  got = [float(lr(s)) for s in (0, 1499, 1500, 1799, 1800, 2100, 2399)]
  assert got == pytest.approx([0.05, 0.05, 5e-3, 5e-3, 5e-4, 5e-5, 5e-5])
  c.warmup_epochs = 1.0  # a linear warmup first, the decays at the same epochs
  lr = step.lr_schedule(config_lib.optimizer_spec(c), learning_rate=0.05, num_epochs=240,
                            steps_per_epoch=10)
  assert [float(lr(s)) for s in (5, 10, 1499, 1500)] == pytest.approx(
      [0.025, 0.05, 0.05, 5e-3])
  for bad in ("", "0", "241", "x"):
    c.lr_decay_epochs = bad
    with pytest.raises(config_lib.UserError, match="lr_decay_epochs"):
      config_lib.validate(c)
