"""kd.ce_weight / kd.kd_weight (mdistiller's CE_WEIGHT / KD_WEIGHT): every
method whose registry entry honours them computes ce_weight * CE + kd_weight
* its soft term (float64 NumPy references), the unset default (-1) leaves
every loss exactly as it was, bad settings are one-line errors, and the
logit-standardisation config is the authors' recipe (0.1 CE + 9 KD, T = 2)."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError
from tests import helpers
from tests.test_losses_methods import batch
from tests.test_losses_methods import f32
from tests.test_losses_methods import np_ce
from tests.test_losses_methods import np_dist
from tests.test_losses_methods import np_dkd
from tests.test_losses_methods import np_kl
from tests.test_losses_methods import np_subclass_to_class

T, ALPHA, S = 3.0, 0.7, 2


def _np_parts(name, s, t, y):
  """(mean CE, the soft term) of `name` in float64, at T, default fields."""
  if name == "subclass":
    return (np.mean(np_ce(np_subclass_to_class(s, S), y)),
            T**2 * np.mean(np_kl(s, t, T)))
  ce = np.mean(np_ce(s, y))
  if name == "dkd":
    return ce, np_dkd(s, t, y, T, 1.0, 8.0)
  if name == "dist":
    return ce, np_dist(s, t, T, 1.0, 1.0, exact=False)
  if name.startswith("reverse"):  # KL(p_s || p_t)
    return ce, T**2 * np.mean(np_kl(t, s, T))
  return ce, T**2 * np.mean(np_kl(s, t, T))


def _registry_loss(name, kd, s, t, y):
  return float(methods.get(name).loss(
      kd, *f32(s, t), jnp.asarray(y), temperature=jnp.float32(T),
      alpha=jnp.float32(ALPHA), epoch=jnp.int32(0)))


HONOURING = sorted(k for k in methods.USER_METHODS
                   if methods.get(k).loss_weights)


def test_the_registry_names_the_methods_that_honour_the_weights():
  """Every method that reads alpha, and DKD and DIST (CE + soft term)."""
  with_alpha = {k for k in methods.USER_METHODS if methods.get(k).alpha}
  assert set(HONOURING) == with_alpha | {"dkd", "dist"}
  assert {"vanilla", "ctkd", "ctkd_instance", "fitnets", "subclass"} <= (
      with_alpha)


@pytest.mark.parametrize("name", HONOURING)
@pytest.mark.parametrize("w_ce,w_kd", [(0.1, 9.0), (1.0, 0.0), (0.0, 2.5)])
def test_set_weights_give_ce_weight_ce_plus_kd_weight_soft(name, w_ce, w_kd):
  s, t, y = batch(11, c=6 * (S if name == "subclass" else 1))
  y = y % 6
  kd = methods.KDSpec(ce_weight=w_ce, kd_weight=w_kd, subclasses=S)
  ce, soft = _np_parts(name, s, t, y)
  np.testing.assert_allclose(_registry_loss(name, kd, s, t, y),
                             w_ce * ce + w_kd * soft, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", HONOURING)
def test_unset_weights_are_alpha_or_one_and_one(name):
  s, t, y = batch(12, c=6 * (S if name == "subclass" else 1))
  y = y % 6
  ce, soft = _np_parts(name, s, t, y)
  w_ce, w_kd = ((1 - ALPHA, ALPHA) if methods.get(name).alpha else (1.0, 1.0))
  got = _registry_loss(name, methods.KDSpec(subclasses=S), s, t, y)
  np.testing.assert_allclose(got, w_ce * ce + w_kd * soft, rtol=2e-5,
                             atol=1e-6)


def test_unset_weights_compute_the_very_same_losses():
  """-1 leaves the computation as it was: the same bits as the losses
  called without weights, class-weighted CE included."""
  s, t, y = f32(*batch(13)[:2]) + [jnp.asarray(batch(13)[2])]
  cw = jnp.linspace(0.5, 2.0, 7)
  for name, direct in (
      ("vanilla", losses.kd_loss(s, t, y, temperature=T, alpha=ALPHA,
                                 class_weights=cw)),
      ("dkd", losses.cross_entropy(s, y, cw) + losses.dkd_loss(
          s, t, y, temperature=T))):
    got = methods.get(name).loss(methods.KDSpec(), s, t, y, temperature=T,
                                 alpha=ALPHA, epoch=0, class_weights=cw)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(direct))


def test_set_weights_scale_the_class_weighted_ce():
  s, t, y = batch(14)
  w = np.linspace(0.5, 2.0, 7)
  got = losses.kd_loss(*f32(s, t), jnp.asarray(y), temperature=T, alpha=0.5,
                       class_weights=jnp.asarray(w, jnp.float32),
                       ce_weight=0.1, kd_weight=9.0)
  wce = np.sum(w[y] * np_ce(s, y)) / np.sum(w[y])
  np.testing.assert_allclose(got, 0.1 * wce + 9.0 * T**2 * np.mean(
      np_kl(s, t, T)), rtol=2e-5)


def test_term_weights_takes_both_or_neither():
  assert losses.term_weights(0.25) == (0.75, 0.25)
  assert losses.term_weights(0.25, 0.1, 9.0) == (0.1, 9.0)
  with pytest.raises(ValueError, match="both"):
    losses.term_weights(0.25, ce_weight=0.1)


def test_report_shows_no_alpha_where_the_weights_replace_it():
  c = config_lib.base_config()
  assert methods.report_columns(c.kd)["alpha"]
  c.kd.ce_weight, c.kd.kd_weight = 0.1, 9.0
  assert not methods.report_columns(c.kd)["alpha"]
  assert methods.report_columns({"method": "vanilla", "alpha": 0.5})["alpha"]


@pytest.mark.parametrize("overrides,message", [
    ({"kd.ce_weight": 0.1}, "config.kd.ce_weight=0.1, kd_weight=-1: set both "
     "(>= 0) or leave both at -1 (weights 1 - alpha and alpha)"),
    ({"kd.ce_weight": -2.0, "kd.kd_weight": 1.0},
     "config.kd.ce_weight=-2.0 must be >= 0 (or -1: unset)"),
    ({"kd.ce_weight": 0.1, "kd.kd_weight": 9.0, "kd.method": "conditional"},
     "kd.ce_weight=0.1, kd.kd_weight=9 has no effect with kd.method=conditional"),
    ({"kd.ce_weight": 0.1, "kd.kd_weight": 9.0, "kd.method": "none"},
     "kd.ce_weight=0.1, kd.kd_weight=9 has no effect with kd.method=none"),
])
def test_bad_weights_are_one_line_errors(overrides, message):
  c = config_lib.base_config()
  for key, value in overrides.items():
    c.kd[key.split(".", 1)[1]] = value
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert str(e.value) == message


def test_logit_standardization_config_is_the_authors_recipe():
  path = os.path.join(helpers.REPO, "configs",
                      "logit_standardization_mobilenet_v3_small.py")
  c = config_lib.load_config_module(path).get_config("runlocal")
  config_lib.validate(c)
  k = c.kd
  assert (k.method, k.logit_standardization, k.temperature, k.ce_weight,
          k.kd_weight) == ("vanilla", True, 2.0, 0.1, 9.0)
  spec = methods.kd_spec(k)
  assert methods.loss_weights(spec) == {"ce_weight": 0.1, "kd_weight": 9.0}
