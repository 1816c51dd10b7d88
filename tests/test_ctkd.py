"""CTKD: the temperature ascends the KD loss by mu * lambda * |dL/draw|."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import config_lib, losses, methods, step
from tests.test_losses import batch, np_kd


def np_ctkd_loss(raw, s, t, y, alpha):
  return np_kd(s, t, y, 1.0 + 20.0 / (1.0 + np.exp(-raw)), alpha)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("epoch", [2, 5, 10, 20])
def test_temperature_step_is_gradient_ascent_scaled_by_lambda(schedule, epoch):
  c = config_lib.base_config()
  c.optimizer = "sgd"
  c.momentum = 0.0
  c.kd.schedule = schedule
  c.kd.temperature_lr = mu = 0.5
  c.kd.temperature_momentum = 0.0
  c.kd.alpha = 0.8
  tx = step.make_optimizer(c, learning_rate=0.1, num_epochs=100,
                           steps_per_epoch=1, ctkd=True)
  s, t, y = batch(7)
  params = {"student": jnp.asarray(s, jnp.float32), "temperature": jnp.float32(0.3)}
  opt_state = tx.init(params)

  def loss(p):
    return losses.kd_loss(p["student"], jnp.asarray(t, jnp.float32), jnp.asarray(y),
                          temperature=losses.ctkd_temperature(p["temperature"]),
                          alpha=0.8)

  grads = jax.grad(loss)(params)
  # The train step scales the temperature's gradient by lambda(epoch).
  scaled = step.scale_temperature_grads(methods.KDSpec.from_config(c), grads,
                                        epoch, schedule == "cosine")
  updates, _ = tx.update(scaled, opt_state, params)
  new = optax.apply_updates(params, updates)

  # Independent reference: central finite difference of the numpy loss.
  h = 1e-5
  dl_draw = (np_ctkd_loss(0.3 + h, s, t, y, 0.8)
             - np_ctkd_loss(0.3 - h, s, t, y, 0.8)) / (2 * h)
  lam = float(losses.curriculum_lambda(epoch, schedule=schedule))
  np.testing.assert_allclose(float(new["temperature"]) - 0.3, mu * lam * dl_draw,
                             rtol=2e-3, atol=1e-7)
  # It moves in the direction that increases the KD loss ...
  assert np_ctkd_loss(float(new["temperature"]), s, t, y, 0.8) > np_ctkd_loss(
      0.3, s, t, y, 0.8)
  # ... while the student takes an ordinary descent step (plain SGD, lr 0.1
  # on the cosine lr schedule's first value at step `epoch`).
  np.testing.assert_array_less(0, np.abs(np.asarray(grads["student"])).sum())
  assert float(loss({"student": new["student"], "temperature": params["temperature"]})
               ) < float(loss(params))


def test_lambda_zero_freezes_temperature_in_first_epoch():
  c = config_lib.base_config()
  c.kd.temperature_momentum = 0.0
  tx = step.make_optimizer(c, learning_rate=0.1, num_epochs=5,
                           steps_per_epoch=3, ctkd=True)
  kd = methods.KDSpec.from_config(c)
  params = {"student": jnp.ones(3), "temperature": jnp.float32(0.0)}
  st = tx.init(params)
  g = {"student": jnp.ones(3), "temperature": jnp.float32(1.0)}
  for cosine in (True, False):  # epoch 0: cosine and linear lambda are 0
    u, _ = tx.update(step.scale_temperature_grads(kd, g, 0, cosine), st, params)
    assert float(u["temperature"]) == 0.0
    # epoch 1: lambda > 0 -> ascent (+)
    u, _ = tx.update(step.scale_temperature_grads(kd, g, 1, cosine), st, params)
    assert float(u["temperature"]) > 0.0
