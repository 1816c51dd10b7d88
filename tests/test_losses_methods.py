"""DKD, DIST, FitNets, logit standardisation, subclass distillation, DML and
the instance-wise CTKD / hint modules against independent float64 numpy
re-implementations written from the papers' definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.distill import kd_modules
from kd_jax.distill import losses

jax.config.update("jax_enable_x64", False)


# jit-compiled once per shape (temperatures and weights are traced): eager
# dispatch would compile every primitive separately and be several times slower.
_STD = ("standardize_logits",)
J_STANDARDIZE = jax.jit(losses.standardize)
J_KL = jax.jit(losses.kl_per_example)
J_KD = jax.jit(losses.kd_loss, static_argnames=_STD)
J_DKD = jax.jit(losses.dkd_loss, static_argnames=_STD)
G_DKD = jax.jit(jax.grad(losses.dkd_loss), static_argnames=_STD)
J_DIST = jax.jit(losses.dist_loss, static_argnames=("exact_pearson",))
G_DIST = jax.jit(jax.grad(losses.dist_loss), static_argnames=("exact_pearson",))
J_HINT = jax.jit(losses.hint_loss)
J_S2C = jax.jit(losses.subclass_to_class_logits, static_argnums=1)
J_AUX = jax.jit(losses.subclass_aux_loss)
G_AUX = jax.jit(jax.grad(losses.subclass_aux_loss))
J_SUB_TEACHER = jax.jit(losses.subclass_teacher_loss,
                        static_argnames=("subclasses",))
J_SUB_KD = jax.jit(losses.subclass_kd_loss, static_argnames=("subclasses",))
G_SUB_KD = jax.jit(jax.grad(losses.subclass_kd_loss),
                   static_argnames=("subclasses",))
J_DML = jax.jit(losses.mutual_learning_losses)
G_DML_SUM = jax.jit(jax.grad(
    lambda z, y, T: losses.mutual_learning_losses(z, y, temperature=T).sum()))


def _standardize_then_kd(s, t, y, temperature, alpha):
  return losses.kd_loss(losses.standardize(s), losses.standardize(t), y,
                        temperature=temperature, alpha=alpha)


J_STD_KD = jax.jit(_standardize_then_kd)
G_STD_KD = jax.jit(jax.grad(_standardize_then_kd))

# Gradient tolerances: jax runs in float32, the references are float64 central
# differences. Checked by hand to reject wrong variants (DKD with alpha/beta
# swapped, DIST without T^2 or with inter/intra swapped, aux loss with ddof=1 or
# without the 1/T, KD with T instead of T^2, DML without the stop-gradient).
GRAD_TOL = dict(rtol=2e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# float64 numpy references
# ----------------------------------------------------------------------------

def np_logsumexp(z, axis=-1):
  m = z.max(axis, keepdims=True)
  return (m + np.log(np.exp(z - m).sum(axis, keepdims=True))).squeeze(axis)


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_kl_dist(p, q):
  """KL(p || q) of two probability vectors (last axis)."""
  return (p * (np.log(p) - np.log(q))).sum(-1)


def np_kl(s, t, T):
  """Per-example KL(softmax(t/T) || softmax(s/T)); T scalar or [B]."""
  T = np.asarray(T, np.float64)
  T = T[:, None] if T.ndim == 1 else T
  return np_kl_dist(np_softmax(t / T), np_softmax(s / T))


def np_ce(s, y):
  return -np.log(np_softmax(s)[np.arange(len(y)), y])


def np_standardize(z):
  out = np.empty_like(z)
  for i, row in enumerate(z):
    out[i] = (row - row.mean()) / (np.std(row, ddof=1) + 1e-7)
  return out


def np_kd(s, t, y, T, alpha):
  T = np.asarray(T, np.float64)
  return np.mean(alpha * T**2 * np_kl(s, t, T) + (1 - alpha) * np_ce(s, y))


def np_dkd_parts(s, t, y, T):
  """Per example (TCKD_i, NCKD_i, teacher target prob p_t^target_i)."""
  tckd, nckd, pt_target = [], [], []
  for si, ti, yi in zip(s, t, y):
    ps, pt = np_softmax(si / T), np_softmax(ti / T)
    # Binary (target, all-other) distributions.
    bs = np.array([ps[yi], np.delete(ps, yi).sum()])
    bt = np.array([pt[yi], np.delete(pt, yi).sum()])
    tckd.append(np_kl_dist(bt, bs))
    # Distribution over the non-target classes only: drop the target column
    # and take the softmax of what is left (== renormalised probabilities).
    qs = np_softmax(np.delete(si, yi) / T)
    qt = np_softmax(np.delete(ti, yi) / T)
    np.testing.assert_allclose(qs, np.delete(ps, yi) / bs[1], rtol=1e-10)
    nckd.append(np_kl_dist(qt, qs))
    pt_target.append(pt[yi])
  return np.array(tckd), np.array(nckd), np.array(pt_target)


def np_dkd(s, t, y, T, alpha, beta):
  tckd, nckd, _ = np_dkd_parts(s, t, y, T)
  return T**2 * np.mean(alpha * tckd + beta * nckd)


def np_pearson(a, b, exact=True):
  """The exact correlation (np.corrcoef), or the DIST authors' form
  <a~, b~> / (|a~| |b~| + 1e-8) of the mean-centred vectors."""
  if exact:
    return np.corrcoef(a, b)[0, 1]
  a, b = a - a.mean(), b - b.mean()
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)


def np_dist(s, t, T, beta, gamma, exact=True):
  ps, pt = np_softmax(s / T), np_softmax(t / T)
  inter = 1 - np.mean([np_pearson(ps[i], pt[i], exact)
                       for i in range(len(ps))])
  intra = 1 - np.mean([np_pearson(ps[:, c], pt[:, c], exact)
                       for c in range(ps.shape[1])])
  return T**2 * (beta * inter + gamma * intra)


def np_subclass_to_class(z, S):
  b, cs = z.shape
  out = np.empty((b, cs // S))
  for i in range(b):
    for c in range(cs // S):
      out[i, c] = np.log(np.sum(np.exp(z[i, c * S:(c + 1) * S])))
  return out


def np_aux(z, T):
  b = z.shape[0]
  v = (z - z.mean(0)) / (z.std(0) + 1e-8)  # ddof=0, per subclass logit
  total = 0.0
  for i in range(b):
    sims = np.array([v[i] @ v[j] / T for j in range(b)])
    p_self = np.exp(sims[i]) / np.exp(sims).sum()
    total += -np.log(p_self)
  return total / b


def np_subclass_teacher(z, y, S, w, T):
  return np.mean(np_ce(np_subclass_to_class(z, S), y)) + w * np_aux(z, T)


def np_subclass_kd(s, t, y, S, T, alpha):
  return np.mean(alpha * T**2 * np_kl(s, t, T)
                 + (1 - alpha) * np_ce(np_subclass_to_class(s, S), y))


def np_dml_member(zk, peers, y, T):
  """L_k = CE_k + T^2/(K-1) * sum over peers of mean_i KL(p_l || p_k)."""
  kl = sum(np.mean(np_kl(zk, zl, T)) for zl in peers)
  return np.mean(np_ce(zk, y)) + T**2 * kl / len(peers)


def num_grad(f, x, h=1e-5):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def batch(seed, b=16, c=7, scale=3.0, teacher_wrong=0.3):
  """Student/teacher logits (exactly representable in float32) and labels
  that the teacher gets wrong for about `teacher_wrong` of the examples."""
  rng = np.random.default_rng(seed)
  s = rng.normal(0, scale, (b, c)).astype(np.float32).astype(np.float64)
  t = rng.normal(0, scale, (b, c)).astype(np.float32).astype(np.float64)
  y = t.argmax(-1)
  wrong = rng.random(b) < teacher_wrong
  wrong[0], wrong[1] = True, False  # always both kinds
  y[wrong] = (y[wrong] + rng.integers(1, c, wrong.sum())) % c
  return s, t, y


def f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


# ----------------------------------------------------------------------------
# Logit standardisation (Sun et al. 2024)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_standardize_matches_numpy(seed):
  s, _, _ = batch(seed, scale=5.0)
  s[0] += 100.0  # shift invariance
  got = np.asarray(J_STANDARDIZE(*f32(s)))
  np.testing.assert_allclose(got, np_standardize(s), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(got.std(-1, ddof=1), 1, rtol=1e-5)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_standardize_then_kd_value_and_grad(T):
  s, t, y = batch(int(T) + 20)
  args = (*f32(s, t), jnp.asarray(y), T, 0.9)

  def ref(z):
    return np_kd(np_standardize(z), np_standardize(t), y, T, 0.9)

  np.testing.assert_allclose(J_STD_KD(*args), ref(s), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(G_STD_KD(*args), num_grad(ref, s), **GRAD_TOL)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_standardize_flag_standardizes_kl_only(T):
  s, t, y = batch(31)
  got = J_KD(*f32(s, t), jnp.asarray(y), temperature=T, alpha=0.6,
              standardize_logits=True)
  want = np.mean(0.6 * T**2 * np_kl(np_standardize(s), np_standardize(t), T)
                 + 0.4 * np_ce(s, y))  # CE on the raw student logits
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# DKD (Zhao et al. 2022)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (0.5, 2.0), (1.0, 0.0),
                                        (0.0, 1.0)])
def test_dkd_matches_numpy(T, alpha, beta):
  s, t, y = batch(int(T) + int(10 * beta))
  got = J_DKD(*f32(s, t), jnp.asarray(y), temperature=T, alpha=alpha,
              beta=beta)
  np.testing.assert_allclose(got, np_dkd(s, t, y, T, alpha, beta),
                             rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_standardized_matches_numpy(T):
  s, t, y = batch(41)
  got = J_DKD(*f32(s, t), jnp.asarray(y), temperature=T, alpha=1.0, beta=8.0,
              standardize_logits=True)
  want = np_dkd(np_standardize(s), np_standardize(t), y, T, 1.0, 8.0)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_dkd_decomposition_identity(T):
  """Zhao et al. eq. (KD = TCKD + (1 - p_t^target) NCKD), per example, using
  the jax KL and the numpy parts."""
  s, t, y = batch(int(10 * T) + 50)
  tckd, nckd, pt_target = np_dkd_parts(s, t, y, T)
  kl = np.asarray(J_KL(*f32(s, t), T))
  np.testing.assert_allclose(kl, tckd + (1 - pt_target) * nckd,
                             rtol=2e-5, atol=1e-6)
  # So DKD with alpha = 1, beta = 1 - p_t^target (per example) is plain KD.
  np.testing.assert_allclose(
      np_dkd(s, t, y, T, 1.0, 0.0) + T**2 * np.mean((1 - pt_target) * nckd),
      T**2 * np.mean(np_kl(s, t, T)), rtol=1e-10)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_grad_matches_numpy(T):
  s, t, y = batch(int(T) + 60)
  g = G_DKD(*f32(s, t), jnp.asarray(y), temperature=T, alpha=1.0, beta=8.0)
  want = num_grad(lambda z: np_dkd(z, t, y, T, 1.0, 8.0), s)
  np.testing.assert_allclose(g, want, **GRAD_TOL)


def test_dkd_zero_when_student_equals_teacher():
  s, _, y = batch(70)
  got = J_DKD(*f32(s, s), jnp.asarray(y), temperature=4.0)
  np.testing.assert_allclose(got, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------
# DIST (Huang et al. 2022)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (2.0, 0.5), (1.0, 0.0),
                                        (0.0, 1.0)])
def test_dist_matches_numpy(T, beta, gamma, exact):
  s, t, y = batch(int(T) + int(10 * gamma) + 80)
  got = J_DIST(*f32(s, t), temperature=T, beta=beta, gamma=gamma,
               exact_pearson=exact)
  np.testing.assert_allclose(got, np_dist(s, t, T, beta, gamma, exact),
                             rtol=2e-5, atol=1e-5)


def _near_one_hot_pair():
  """A teacher 18 logits sure of classes 0-2 only, at T = 1 its other
  classes' columns of size ~1e-8, and a student that follows it loosely."""
  rng = np.random.default_rng(7)
  t = rng.normal(0, 1, (16, 7)) + 18.0 * np.eye(7)[rng.integers(0, 3, 16)]
  s = t / 4 + rng.normal(0, 0.3, (16, 7))
  return [a.astype(np.float32).astype(np.float64) for a in (s, t)]


def test_dist_default_is_the_authors_pearson_and_exact_is_an_option():
  """On a near one-hot teacher at T = 1 the authors' |a| |b| + 1e-8 and the
  exact correlation differ; each matches its float64 NumPy form, the
  default is the authors', and the registry's field picks the form."""
  from kd_jax.distill import methods
  s, t = _near_one_hot_pair()
  authors, exact = np_dist(s, t, 1.0, 1.0, 1.0, False), np_dist(
      s, t, 1.0, 1.0, 1.0, True)
  assert authors - exact > 0.05
  kw = dict(temperature=1.0, beta=1.0, gamma=1.0)
  np.testing.assert_allclose(J_DIST(*f32(s, t), **kw), authors, rtol=1e-4)
  np.testing.assert_allclose(J_DIST(*f32(s, t), exact_pearson=True, **kw),
                             exact, rtol=1e-4)
  y = jnp.zeros(16, jnp.int32)
  ce = float(losses.cross_entropy(*f32(s), y))
  for flag, want in ((False, authors), (True, exact)):
    got = methods.get("dist").loss(
        methods.KDSpec(dist_exact_pearson=flag), *f32(s, t), y,
        temperature=1.0, alpha=0.5, epoch=0)
    np.testing.assert_allclose(float(got) - ce, want, rtol=1e-4)
  assert methods.KDSpec().dist_exact_pearson is False


@pytest.mark.parametrize("exact", [False, True])
def test_dist_grad_is_finite_for_a_batch_of_one(exact):
  """A batch of one has all-zero centred columns: gradient 0, not NaN."""
  s, t, _ = batch(5, b=2)
  s, t = s[:1], t[:1]
  g = jax.grad(losses.dist_loss)(*f32(s, t), temperature=2.0,
                                 exact_pearson=exact)
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_zero_for_identical_logits(T):
  _, t, _ = batch(90)
  np.testing.assert_allclose(
      J_DIST(*f32(t, t), temperature=T, beta=1.0, gamma=2.0), 0.0,
      atol=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_grad_matches_numpy(T):
  s, t, _ = batch(int(T) + 100)
  g = G_DIST(*f32(s, t), temperature=T, beta=1.0, gamma=2.0)
  want = num_grad(lambda z: np_dist(z, t, T, 1.0, 2.0), s)
  np.testing.assert_allclose(g, want, **GRAD_TOL)


# ----------------------------------------------------------------------------
# FitNets hint loss and adapter
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (8, 10)])
def test_hint_loss_is_elementwise_mse(shape):
  rng = np.random.default_rng(len(shape))
  a, b = rng.normal(size=shape), rng.normal(size=shape)
  a, b = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(
      np.float64)
  want = np.sum((a - b) ** 2) / a.size
  np.testing.assert_allclose(J_HINT(*f32(a, b)), want, rtol=1e-5)


def test_hint_adapter_4d_is_1x1_conv_and_2d_is_dense():
  rng = np.random.default_rng(0)
  x4 = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  m = kd_modules.HintAdapter(out_channels=6)
  params = jax.jit(m.init)(jax.random.PRNGKey(0), x4)
  params = jax.tree.map(lambda p: p + 0.1 * jnp.ones_like(p), params)  # bias != 0
  y4 = np.asarray(jax.jit(m.apply)(params, x4))
  assert y4.shape == (2, 5, 4, 6)
  kernel = np.asarray(params["params"]["conv"]["kernel"], np.float64)
  bias = np.asarray(params["params"]["conv"]["bias"], np.float64)
  assert kernel.shape == (1, 1, 3, 6)
  want = np.einsum("bhwc,cd->bhwd", x4.astype(np.float64), kernel[0, 0]) + bias
  np.testing.assert_allclose(y4, want, rtol=1e-5, atol=1e-5)

  x2 = rng.normal(size=(4, 9)).astype(np.float32)
  params2 = jax.jit(m.init)(jax.random.PRNGKey(1), x2)
  y2 = np.asarray(jax.jit(m.apply)(params2, x2))
  assert y2.shape == (4, 6)
  d = params2["params"]["dense"]
  np.testing.assert_allclose(
      y2, x2.astype(np.float64) @ np.asarray(d["kernel"]) + np.asarray(d["bias"]),
      rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Subclass distillation (Mueller, Kornblith, Hinton 2020)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("S", [1, 2, 4])
def test_subclass_to_class_logits(S):
  rng = np.random.default_rng(S)
  z = rng.normal(0, 3, (6, 5 * S)).astype(np.float32).astype(np.float64)
  got = np.asarray(J_S2C(*f32(z), S))
  np.testing.assert_allclose(got, np_subclass_to_class(z, S), rtol=1e-5,
                             atol=1e-5)
  # softmax over classes == summed subclass probabilities within each group.
  p_sub = np_softmax(z)
  grouped = np.stack([p_sub[:, c * S:(c + 1) * S].sum(-1) for c in range(5)], -1)
  np.testing.assert_allclose(np_softmax(got.astype(np.float64)), grouped,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_subclass_aux_loss_value_and_grad(T, seed):
  rng = np.random.default_rng(seed)
  z = rng.normal(0, 2, (8, 6)).astype(np.float32).astype(np.float64)
  z[:, 1] += 5.0  # per-column offsets/scales are normalised away
  z[:, 2] *= 3.0
  np.testing.assert_allclose(J_AUX(*f32(z), temperature=T), np_aux(z, T),
                             rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(G_AUX(*f32(z), temperature=T),
                             num_grad(lambda v: np_aux(v, T), z), **GRAD_TOL)


def test_subclass_aux_loss_invariant_to_column_affine_maps():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(8, 6))
  z2 = z * rng.uniform(0.5, 3.0, 6) + rng.normal(0, 5, 6)
  np.testing.assert_allclose(J_AUX(*f32(z)), J_AUX(*f32(z2)), rtol=1e-4)


@pytest.mark.parametrize("S,w,T", [(2, 1.0, 1.0), (3, 0.5, 0.2)])
def test_subclass_teacher_loss_matches_numpy(S, w, T):
  rng = np.random.default_rng(S)
  z = rng.normal(0, 2, (10, 4 * S)).astype(np.float32).astype(np.float64)
  y = rng.integers(0, 4, 10)
  got = J_SUB_TEACHER(*f32(z), jnp.asarray(y), subclasses=S, aux_weight=w,
                      aux_temperature=T)
  np.testing.assert_allclose(got, np_subclass_teacher(z, y, S, w, T),
                             rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 1.0),
                                     (2.0, 0.0)])
def test_subclass_kd_loss_value_and_grad(T, alpha):
  S = 2
  s, t, _ = batch(int(T * 10), b=12, c=4 * S)
  rng = np.random.default_rng(int(T))
  y = rng.integers(0, 4, 12)
  args = (*f32(s, t), jnp.asarray(y))
  kw = dict(subclasses=S, temperature=T, alpha=alpha)
  ref = lambda z: np_subclass_kd(z, t, y, S, T, alpha)
  np.testing.assert_allclose(J_SUB_KD(*args, **kw), ref(s), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(G_SUB_KD(*args, **kw), num_grad(ref, s), **GRAD_TOL)


# ----------------------------------------------------------------------------
# Deep mutual learning (Zhang et al. 2018)
# ----------------------------------------------------------------------------

def cohort(K, seed, b=10, c=5):
  rng = np.random.default_rng(seed)
  z = rng.normal(0, 2, (K, b, c)).astype(np.float32).astype(np.float64)
  return z, rng.integers(0, c, b)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_mutual_learning_losses_value(K, T):
  z, y = cohort(K, K)
  got = np.asarray(J_DML(*f32(z), jnp.asarray(y), temperature=T))
  assert got.shape == (K,)
  want = [np_dml_member(z[k], [z[l] for l in range(K) if l != k], y, T)
          for k in range(K)]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_mutual_learning_gradient_is_each_members_own(K, T):
  """d(sum_k L_k)/dz_k == dL_k/dz_k with the peers held constant."""
  z, y = cohort(K, 10 + K)
  g = np.asarray(G_DML_SUM(*f32(z), jnp.asarray(y), T))
  for k in range(K):
    peers = [z[l] for l in range(K) if l != k]
    want = num_grad(lambda zk: np_dml_member(zk, peers, y, T), z[k])
    np.testing.assert_allclose(g[k], want, **GRAD_TOL)


# ----------------------------------------------------------------------------
# Per-example temperature (instance-wise CTKD)
# ----------------------------------------------------------------------------

def test_kl_per_example_with_temperature_vector():
  s, t, _ = batch(120)
  T_B = np.random.default_rng(0).uniform(1.0, 21.0, len(s)).astype(np.float32)
  got = J_KL(*f32(s, t, T_B))
  np.testing.assert_allclose(got, np_kl(s, t, T_B.astype(np.float64)),
                             rtol=2e-5, atol=1e-7)
  # Each row equals the scalar-T KL of that row alone.
  for i in (0, 5):
    np.testing.assert_allclose(
        got[i], J_KL(*f32(s[i:i + 1], t[i:i + 1]), T_B[i])[0],
        rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_kd_loss_with_temperature_vector(alpha):
  s, t, y = batch(130)
  T_B = np.random.default_rng(1).uniform(1.0, 21.0, len(s)).astype(np.float32)
  T64 = T_B.astype(np.float64)
  got = J_KD(*f32(s, t), jnp.asarray(y), temperature=jnp.asarray(T_B),
             alpha=alpha)
  want = np.mean(alpha * T64**2 * np_kl(s, t, T64) + (1 - alpha) * np_ce(s, y))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def np_instance_temperature(params, t, s, t_start, t_end):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  x = np.concatenate([t, s], -1)  # teacher first
  h = np.maximum(x @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
  raw = (h @ p["out"]["kernel"] + p["out"]["bias"])[:, 0]
  return t_start + t_end / (1 + np.exp(-raw))


@pytest.mark.parametrize("t_start,t_end", [(1.0, 20.0), (2.0, 5.0)])
def test_instance_temperature_module(t_start, t_end):
  s, t, _ = batch(140, b=12, c=5)
  m = kd_modules.InstanceTemperature(hidden=16, t_start=t_start, t_end=t_end)
  params = jax.jit(m.init)(jax.random.PRNGKey(0), *f32(t, s))
  y_ = jnp.zeros(12, jnp.int32)

  def kd(ps, a, b):  # the student's KD loss at the module's temperatures
    return losses.kd_loss(b, a, y_, temperature=m.apply(ps, a, b), alpha=1.0)

  @jax.jit
  def probe(ps, a, b):
    temps = m.apply(ps, a, b)
    return dict(
        T=temps,
        T_big=m.apply(ps, 300 * a, -300 * b),
        # d sum(T) / d logits: the logits are stop-gradient inputs.
        g_in=jax.grad(lambda a_, b_: m.apply(ps, a_, b_).sum(),
                      argnums=(0, 1))(a, b),
        g_kd=jax.grad(kd, argnums=(0, 1, 2))(ps, a, b),
        g_direct=jax.grad(lambda a_, b_: losses.kd_loss(
            b_, a_, y_, temperature=jax.lax.stop_gradient(temps), alpha=1.0),
                          argnums=(0, 1))(a, b))

  out = probe(params, *f32(t, s))
  T = np.asarray(out["T"])
  assert T.shape == (12,)
  assert np.all((T >= t_start) & (T <= t_start + t_end))
  np.testing.assert_allclose(
      T, np_instance_temperature(params, t, s, t_start, t_end), rtol=1e-5)
  # Saturating inputs stay inside [t_start, t_start + t_end] ...
  T_big = np.asarray(out["T_big"])
  assert np.all((T_big >= t_start) & (T_big <= t_start + t_end))
  assert T_big.max() - T_big.min() > 0.5 * t_end  # ... and nearly reach both ends
  # No gradient flows back into the logits through T ...
  for g in out["g_in"]:
    np.testing.assert_array_equal(g, 0.0)
  # ... nor through a loss that uses T (the teacher/student gradients are
  # those with T held constant), while the module's parameters do learn.
  gp, ga, gb = out["g_kd"]
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(gp))
  np.testing.assert_allclose(ga, out["g_direct"][0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gb, out["g_direct"][1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["vanilla", "fitnets", "ctkd"])
def test_registry_hinton_loss_honours_t_squared(name):
  """config.kd.t_squared reaches every method whose loss is kd_loss."""
  from kd_jax.distill import methods
  rng = np.random.default_rng(3)
  s, t = (jnp.asarray(rng.normal(0, 2, (6, 5)), jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, 5, 6))
  for t_squared in (True, False):
    got = methods.get(name).loss(
        methods.KDSpec(t_squared=t_squared), s, t, y, temperature=3.0,
        alpha=0.6, epoch=0)
    want = losses.kd_loss(s, t, y, temperature=3.0, alpha=0.6,
                          t_squared=t_squared)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert not np.isclose(
      methods.get(name).loss(methods.KDSpec(t_squared=False), s, t, y,
                             temperature=3.0, alpha=0.6, epoch=0),
      methods.get(name).loss(methods.KDSpec(), s, t, y, temperature=3.0,
                             alpha=0.6, epoch=0))
