"""CTKD: the temperature ascends the KD loss by mu * lambda * |dL/draw|."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import config_lib
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.train import step
from tests.test_losses import batch
from tests.test_losses import np_kd


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
  tx = step.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.1, num_epochs=100,
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
  tx = step.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.1, num_epochs=5,
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


def test_the_temperature_starts_where_the_authors_start():
  """raw = 1: T = 1 + 20 sigmoid(1) ~ 15.6 (Li et al. 2023's code)."""
  kd = config_lib.base_config().kd
  t0 = float(losses.ctkd_temperature(kd.init_raw, t_start=kd.t_start,
                                     t_end=kd.t_end))
  assert kd.init_raw == 1.0
  np.testing.assert_allclose(t0, 1.0 + 20.0 / (1.0 + np.exp(-1.0)), rtol=1e-6)
  assert 15.6 < t0 < 15.7


@pytest.mark.parametrize("method", ["ctkd", "ctkd_instance"])
def test_a_fixed_temperature_given_to_a_learned_one_is_refused(method):
  c = config_lib.base_config()
  c.kd.method = method
  config_lib.validate(c)  # the default T: not given
  c.kd.temperature = 2.0
  with pytest.raises(config_lib.UserError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
      f"config.kd.temperature=2 is a fixed temperature; method {method!r} "
      "learns its own (from config.kd.init_raw): leave kd.temperature at its "
      "default 4")


def test_report_shows_the_learned_final_temperature(tmp_path):
  """The study report's T of a CTKD cell is its learned final temperature
  (mean over seeds in the summary), not the config's unused T."""
  import json

  from kd_jax.study import report
  for seed, final in ((0, 7.25), (1, 9.75)):
    d = tmp_path / f"method-ctkd__seed-{seed}"
    d.mkdir()
    config = {"seed": seed, "dataset": {"image_size": 32},
              "kd": {"temperature": 4.0, "alpha": 0.5, "schedule": "cosine"}}
    stage = {"model": "m", "method": "ctkd", "params": 1, "size_mb": 0.1,
             "num_classes": 2, "dataset": "d", "best_val_accuracy": 0.5,
             "final_temperature": final,
             "test": {"accuracy": 0.5, "macro_f1": 0.5}}
    (d / "config.json").write_text(json.dumps(config))
    (d / "results.json").write_text(json.dumps(
        {"config": config, "stages": {"student": stage}}))
  rows, _, _ = report.gather(str(tmp_path))
  assert sorted(r["temperature"] for r in rows) == [7.25, 9.75]
  (summary,) = report.summarize_settings(rows)
  assert summary["temperature"] == 8.5
