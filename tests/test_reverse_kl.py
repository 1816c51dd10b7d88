"""Reverse-KL KD, the worked example of adding a method: its loss against a
float64 NumPy re-implementation, its registry entry (T, alpha, the shared
options it reads, the report's columns), its config cell, the refusal of
options a method ignores, and that adding it touched four files."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_reverse_kd(s, t, y, T, alpha, t_squared=True, standardize=False):
  """alpha T^2 KL(p_s || p_t) + (1 - alpha) CE, p = softmax(z / T), mean
  over the batch; z-scored logits inside the KL with `standardize` (std
  with ddof=1, as Sun et al.'s code)."""
  s, t = s.astype(np.float64), t.astype(np.float64)
  zs, zt = s, t
  if standardize:
    zs = (s - s.mean(-1, keepdims=True)) / (s.std(-1, ddof=1, keepdims=True) + 1e-7)
    zt = (t - t.mean(-1, keepdims=True)) / (t.std(-1, ddof=1, keepdims=True) + 1e-7)
  log_ps, log_pt = _log_softmax(zs / T), _log_softmax(zt / T)
  kl = (np.exp(log_ps) * (log_ps - log_pt)).sum(-1)
  ce = -_log_softmax(s)[np.arange(len(y)), y]
  scale = T**2 if t_squared else 1.0
  return np.mean(alpha * scale * kl + (1 - alpha) * ce)


RNG = np.random.default_rng(0)
S, T_LOGITS = RNG.normal(0, 2, (16, 5)), RNG.normal(0, 3, (16, 5))
Y = RNG.integers(0, 5, 16)


@pytest.mark.parametrize("T,alpha,t_squared,standardize", [
    (1.0, 0.5, True, False), (4.0, 0.9, True, False), (2.0, 0.3, False, False),
    (3.0, 1.0, True, True)])
def test_reverse_kd_matches_numpy(T, alpha, t_squared, standardize):
  got = losses.reverse_kd_loss(
      jnp.asarray(S, jnp.float32), jnp.asarray(T_LOGITS, jnp.float32),
      jnp.asarray(Y), temperature=T, alpha=alpha, t_squared=t_squared,
      standardize_logits=standardize)
  np.testing.assert_allclose(
      got, np_reverse_kd(S, T_LOGITS, Y, T, alpha, t_squared, standardize),
      rtol=1e-5)


def test_reverse_kl_differs_from_forward_kl():
  """KL is not symmetric: the reverse term is not Hinton's."""
  kw = dict(temperature=2.0, alpha=1.0)
  args = (jnp.asarray(S, jnp.float32), jnp.asarray(T_LOGITS, jnp.float32),
          jnp.asarray(Y))
  assert abs(float(losses.reverse_kd_loss(*args, **kw))
             - float(losses.kd_loss(*args, **kw))) > 1e-2


def test_the_registry_entry_reads_the_config_knobs():
  c = config_lib.base_config()
  c.kd.method = "reverse_kl"
  c.kd.t_squared = False
  c.kd.logit_standardization = True
  spec = methods.kd_spec(c.kd)
  got = methods.get("reverse_kl").loss(
      spec, jnp.asarray(S, jnp.float32), jnp.asarray(T_LOGITS, jnp.float32),
      jnp.asarray(Y), temperature=jnp.float32(3.0), alpha=jnp.float32(0.7),
      epoch=jnp.int32(0))
  np.testing.assert_allclose(
      got, np_reverse_kd(S, T_LOGITS, Y, 3.0, 0.7, False, True), rtol=1e-5)
  assert methods.report_columns(c.kd) == {
      "temperature": "fixed", "alpha": True, "schedule": False}
  assert "reverse_kl" in methods.VMAPPABLE


def test_its_config_cell_validates():
  config = config_lib.load_config_module(
      "configs/reverse_kl_mobilenet_v3_small.py").get_config("runlocal")
  config_lib.validate(config)
  assert config.kd.method == "reverse_kl"


@pytest.mark.parametrize("method,option,value,words", [
    ("dist", "logit_standardization", True,
     "kd.logit_standardization=True has no effect with kd.method=dist"),
    ("conditional", "t_squared", False,
     "kd.t_squared=False has no effect with kd.method=conditional"),
    ("at", "logit_standardization", True,
     "kd.logit_standardization=True has no effect with kd.method=at "
     "(kd.feature_logit_method=none)"),
])
def test_an_option_the_method_ignores_is_refused(method, option, value, words):
  c = config_lib.base_config()
  c.kd.method = method
  c.kd[option] = value
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert str(e.value) == words


def test_adding_it_touched_four_files():
  """The Contributing example, measured: outside the README, only the loss,
  the registry, the config and this test name the method (studies that
  list every method, configs/repro/, use it; they are not part of adding
  it)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  found = set()
  for top in ("kd_jax", "configs", "tests", "benchmarks", "launch", "colabs"):
    for dirpath, _, files in os.walk(os.path.join(root, top)):
      for name in files:
        if name.endswith((".py", ".ipynb", ".sh")):
          path = os.path.join(dirpath, name)
          with open(path) as f:
            text = f.read()
          if "reverse_kl" in text or "reverse_kd_loss" in text:
            found.add(os.path.relpath(path, root))
  found = {f for f in found if not f.startswith("configs/repro/")}
  assert found == {"kd_jax/distill/losses.py", "kd_jax/distill/methods.py",
                   "configs/reverse_kl_mobilenet_v3_small.py",
                   "tests/test_reverse_kl.py"}, found
