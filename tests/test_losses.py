"""Losses against an independent float64 numpy re-implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.distill import losses

jax.config.update("jax_enable_x64", False)


def np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_kl(t_logits, s_logits, T):
  pt, ps = np_softmax(t_logits / T), np_softmax(s_logits / T)
  return (pt * (np.log(pt) - np.log(ps))).sum(-1)


def np_ce(s_logits, y):
  return -np.log(np_softmax(s_logits)[np.arange(len(y)), y])


def np_kd(s, t, y, T, alpha):
  return np.mean(alpha * T**2 * np_kl(t, s, T) + (1 - alpha) * np_ce(s, y))


def np_conditional(s, t, y, T):
  c = (t.argmax(-1) == y).astype(np.float64)
  return np.mean(c * T**2 * np_kl(t, s, T) + (1 - c) * np_ce(s, y))


def np_kd_grad(s, t, y, T, alpha):
  """Analytic d/ds: alpha*T*(p_s^T - p_t^T) + (1-alpha)*(p_s - onehot), / B."""
  b, c = s.shape
  onehot = np.eye(c)[y]
  return (alpha * T * (np_softmax(s / T) - np_softmax(t / T))
          + (1 - alpha) * (np_softmax(s) - onehot)) / b


def batch(seed, b=16, c=7, teacher_wrong=0.3):
  rng = np.random.default_rng(seed)
  s = rng.normal(0, 3, (b, c))
  t = rng.normal(0, 3, (b, c))
  y = t.argmax(-1)
  wrong = rng.random(b) < teacher_wrong  # teacher partly wrong
  y[wrong] = (y[wrong] + rng.integers(1, c, wrong.sum())) % c
  return s, t, y


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_loss_matches_numpy(T, alpha):
  s, t, y = batch(int(T * 10 + alpha * 100))
  got = losses.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                       jnp.asarray(y), temperature=T, alpha=alpha)
  np.testing.assert_allclose(got, np_kd(s, t, y, T, alpha), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
def test_kd_loss_grad_matches_analytic(T):
  s, t, y = batch(3)
  g = jax.grad(lambda z: losses.kd_loss(z, jnp.asarray(t, jnp.float32),
                                        jnp.asarray(y), temperature=T,
                                        alpha=0.7))(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(g, np_kd_grad(s, t, y, T, 0.7), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T", [0.5, 4.0, 12.0])
@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_kd_loss_without_t_squared_matches_numpy(T, alpha):
  """t_squared=False: mean_i[alpha KL_i + (1 - alpha) CE_i], the soft
  term's T^2 factor dropped (value and gradient)."""
  s, t, y = batch(int(T * 7 + alpha * 10))
  np_loss = np.mean(alpha * np_kl(t, s, T) + (1 - alpha) * np_ce(s, y))
  f = lambda z: losses.kd_loss(z, jnp.asarray(t, jnp.float32), jnp.asarray(y),
                               temperature=T, alpha=alpha, t_squared=False)
  z = jnp.asarray(s, jnp.float32)
  np.testing.assert_allclose(f(z), np_loss, rtol=2e-5, atol=1e-5)
  onehot = np.eye(s.shape[1])[y]
  np_grad = (alpha / T * (np_softmax(s / T) - np_softmax(t / T))
             + (1 - alpha) * (np_softmax(s) - onehot)) / len(y)
  np.testing.assert_allclose(jax.grad(f)(z), np_grad, rtol=1e-4, atol=1e-6)


def test_kd_is_batchmean_not_divided_by_classes():
  # Hand-computed: B=1, C=2, teacher [ln 3, 0] -> p_t = (3/4, 1/4);
  # student [0, 0] -> p_s = (1/2, 1/2); T=1, alpha=1.
  # KL = 3/4 ln(3/2) + 1/4 ln(1/2).
  kl = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
  got = losses.kd_loss(jnp.zeros((1, 2)), jnp.array([[np.log(3.0), 0.0]]),
                       jnp.array([0]), temperature=1.0, alpha=1.0)
  np.testing.assert_allclose(got, kl, rtol=1e-6)
  # Same example twice: the batch mean is unchanged.
  got2 = losses.kd_loss(jnp.zeros((2, 2)), jnp.array([[np.log(3.0), 0.0]] * 2),
                        jnp.array([0, 0]), temperature=1.0, alpha=1.0)
  np.testing.assert_allclose(got2, kl, rtol=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("wrong", [0.0, 0.4, 1.0])
def test_conditional_kd_matches_numpy(T, wrong):
  s, t, y = batch(11, teacher_wrong=wrong)
  args = (jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(y))
  got = losses.conditional_kd_loss(*args, temperature=T)
  np.testing.assert_allclose(got, np_conditional(s, t, y, T), rtol=2e-5, atol=1e-5)
  # Gradient: per example, KD gradient where the teacher is right, CE elsewhere.
  c = (t.argmax(-1) == y)[:, None]
  want = np.where(c, np_kd_grad(s, t, y, T, 1.0), np_kd_grad(s, t, y, T, 0.0))
  g = jax.grad(lambda z: losses.conditional_kd_loss(
      z, args[1], args[2], temperature=T))(args[0])
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_conditional_equals_kd_alpha_extremes():
  s, t, _ = batch(5)
  y_right = t.argmax(-1)
  a = [jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)]
  np.testing.assert_allclose(
      losses.conditional_kd_loss(*a, jnp.asarray(y_right), temperature=4.0),
      losses.kd_loss(*a, jnp.asarray(y_right), temperature=4.0, alpha=1.0), rtol=1e-6)
  y_wrong = (y_right + 1) % t.shape[1]
  np.testing.assert_allclose(
      losses.conditional_kd_loss(*a, jnp.asarray(y_wrong), temperature=4.0),
      losses.kd_loss(*a, jnp.asarray(y_wrong), temperature=4.0, alpha=0.0), rtol=1e-6)


def test_losses_jit():
  s, t, y = batch(0)
  f = jax.jit(lambda s, t, y, T: losses.kd_loss(s, t, y, temperature=T, alpha=0.5))
  np.testing.assert_allclose(f(s.astype(np.float32), t.astype(np.float32), y, 3.0),
                             np_kd(s, t, y, 3.0, 0.5), rtol=2e-5)


def test_ctkd_temperature_mapping():
  np.testing.assert_allclose(losses.ctkd_temperature(0.0), 1.0 + 20.0 * 0.5)
  np.testing.assert_allclose(losses.ctkd_temperature(2.0, t_start=2.0, t_end=10.0),
                             2.0 + 10.0 / (1.0 + np.exp(-2.0)), rtol=1e-6)


@pytest.mark.parametrize("schedule,expected", [
    # E = 0, Ecap/2, Ecap, 2*Ecap with lambda in [0, 1], Ecap = 10.
    ("cosine", [0.0, 0.5 * (1 + np.cos(1.5 * np.pi)), 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 1.0]),
])
def test_curriculum_lambda(schedule, expected):
  got = [float(losses.curriculum_lambda(e, schedule=schedule)) for e in (0, 5, 10, 20)]
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # A custom range: lambda_min + (lambda_max - lambda_min) * shape.
  got = float(losses.curriculum_lambda(5, schedule=schedule, lambda_min=0.2,
                                       lambda_max=0.6, epoch_cap=10))
  np.testing.assert_allclose(got, 0.2 + 0.4 * expected[1], atol=1e-6)


def test_unknown_schedule_rejected():
  with pytest.raises(ValueError, match="unknown CTKD schedule 'step'"):
    losses.curriculum_lambda(1, schedule="step")
