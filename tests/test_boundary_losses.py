"""AB and OFD (boundary_losses.py) against float64 numpy re-implementations
of the authors' code (RepDistiller's ABLoss, mdistiller's OFD), plus the
properties the papers rely on."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kd_jax.distill import boundary_losses as bl
from tests.test_feature_losses import f32, np_adaptive_pool, rand

RTOL = 1e-5


# ---------------------------------------------------------------- AB ------

def np_ab(gs, gt, margin=1.0):
  """RepDistiller's ABLoss: per pair the sum of (s + m)^2 where s > -m and
  t <= 0 and (s - m)^2 where s <= m and t > 0, weighted 2^(i - n + 1),
  divided by the batch size and scaled by 3 / 1000, summed."""
  n, total = len(gs), 0.0
  for i, (s, t) in enumerate(zip(gs, gt)):
    loss = ((s + margin) ** 2 * ((s > -margin) & (t <= 0))
            + (s - margin) ** 2 * ((s <= margin) & (t > 0)))
    total += 2.0 ** (i - n + 1) * np.abs(loss).sum() / s.shape[0] / 1000 * 3
  return total


def test_ab_matches_numpy_and_properties():
  gs = [rand(0, 3, 8, 8, 4, scale=2.0), rand(1, 3, 4, 4, 6, scale=2.0)]
  gt = [rand(2, 3, 8, 8, 4), rand(3, 3, 4, 4, 6)]
  got = bl.ab_loss([f32(g) for g in gs], [f32(g) for g in gt])
  np.testing.assert_allclose(got, np_ab(gs, gt), rtol=RTOL)
  # Zero once the student is beyond the margin on the teacher's side of
  # every boundary; positive while it is inside the margin.
  t = gt[1]
  beyond = np.where(t > 0, 1.5, -1.5)
  assert float(bl.ab_loss([f32(beyond)], [f32(t)])) == 0.0
  assert float(bl.ab_loss([f32(0.5 * beyond)], [f32(t)])) > 0.0


@pytest.mark.parametrize("s_hw,t_hw", [(8, 8), (8, 4), (4, 8), (6, 4)])
def test_ab_connector_maps_to_the_teachers_shape(s_hw, t_hw):
  x = jnp.ones((2, s_hw, s_hw, 3))
  reg = bl.ConvRegressor((t_hw, t_hw, 5))
  out = jax.eval_shape(lambda: reg.init_with_output(
      jax.random.PRNGKey(0), x, train=False)[0])
  assert out.shape == (2, t_hw, t_hw, 5)
  assert bl.ab_connector_needed((s_hw, s_hw, 3), (t_hw, t_hw, 5))
  assert not bl.ab_connector_needed((8, 8, 5), (8, 8, 5))


# ---------------------------------------------------------------- OFD -----

def np_margin(gamma, beta):
  """mdistiller's margin loop (scipy's norm.cdf)."""
  out = []
  for s, m in zip(gamma, beta):
    s = abs(s)
    if stats.norm.cdf(-m / s) > 0.001:
      out.append(-s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
                 / stats.norm.cdf(-m / s) + m)
    else:
      out.append(-3 * s)
  return np.asarray(out)


def test_ofd_margin_matches_mdistiller_and_is_the_negative_mean():
  gamma = np.array([1.0, -0.5, 2.0, 0.3, 1.0])
  beta = np.array([0.0, 0.2, -1.0, 2.0, 5.0])  # the last two: Phi < 0.001
  got = bl.ofd_margin(gamma, beta)
  np.testing.assert_allclose(got, np_margin(gamma, beta), rtol=RTOL)
  np.testing.assert_allclose(got[3:], [-0.9, -3.0], rtol=RTOL)
  # E[x | x < 0] for x ~ N(beta, gamma^2): the truncated normal's mean.
  for g, b, m in zip(gamma[:3], beta[:3], got[:3]):
    s = abs(g)
    want = stats.truncnorm.mean(-np.inf, -b / s, loc=b, scale=s)
    np.testing.assert_allclose(m, want, rtol=1e-5)
    assert m < 0


def np_ofd_pair(s, t, m):
  """mdistiller's feat_loss: three cases, |.|.mean(dim=0).sum()."""
  loss = ((s - m) ** 2 * ((s > m) & (t <= m))
          + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
          + (s - t) ** 2 * (t > 0))
  return np.abs(loss).mean(axis=0).sum()


def test_ofd_matches_numpy_and_properties():
  gs = [rand(0, 3, 8, 8, 4), rand(1, 3, 4, 4, 6)]
  gt = [rand(2, 3, 16, 16, 4), rand(3, 3, 4, 4, 6)]  # the first pooled
  margins = [bl.ofd_margin(np.ones(4), np.zeros(4)),
             bl.ofd_margin(np.full(6, 0.5), np.linspace(-1, 1, 6))]
  got = bl.ofd_loss([f32(g) for g in gs], [f32(g) for g in gt], margins)
  want = (np_ofd_pair(gs[0], np_adaptive_pool(gt[0], 8), margins[0]) / 2
          + np_ofd_pair(gs[1], gt[1], margins[1]))
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # No loss where the student is below both the teacher and the margin
  # while the teacher is negative: the ReLU hides the difference.
  t = -np.abs(rand(4, 2, 4, 4, 3)) - 0.1
  m = np.full(3, -0.05, np.float32)
  assert float(bl.ofd_pair_loss(f32(t - 1.0), f32(t), m)) == 0.0
  assert float(bl.ofd_pair_loss(f32(t + 1.0), f32(t), m)) > 0.0


def test_ofd_connector_maps_channels():
  conn = bl.OFDConnector(7)
  x = jnp.ones((2, 4, 4, 3))
  out, variables = jax.eval_shape(lambda: conn.init_with_output(
      jax.random.PRNGKey(0), x, train=False))
  assert out.shape == (2, 4, 4, 7)
  assert "bias" not in variables["params"]["conv"]
  assert set(variables) == {"params", "batch_stats"}
