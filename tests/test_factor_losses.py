"""FT and KDSVD (factor_losses.py) against float64 numpy re-implementations
of the authors' code (RepDistiller's FactorTransfer; the KDSVD authors'
SVD distillation), plus the finite gradient KDSVD's SVD needs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.distill import factor_losses as ff
from tests.test_feature_losses import f32, np_adaptive_pool, numpy_variables
from tests.test_feature_losses import np_normalize, rand

RTOL = 1e-5


# ---------------------------------------------------------------- FT ------

def np_ft(fs, ft):
  """RepDistiller's factor_loss: the larger map pooled, then mean |Q_s -
  Q_t| with Q = normalize(mean_c f^2) flattened per example."""
  if fs.shape[1] > ft.shape[1]:
    fs = np_adaptive_pool(fs, ft.shape[1])
  elif fs.shape[1] < ft.shape[1]:
    ft = np_adaptive_pool(ft, fs.shape[1])
  q = lambda f: np.stack([np_normalize((x ** 2).mean(-1).ravel()) for x in f])
  return np.abs(q(fs) - q(ft)).mean()


def test_ft_matches_numpy_and_properties():
  fs, ft = rand(0, 3, 8, 8, 4), rand(1, 3, 4, 4, 6, scale=3.0)
  np.testing.assert_allclose(ff.ft_loss(f32(fs), f32(ft)), np_ft(fs, ft),
                             rtol=RTOL)
  # Invariant to the factors' scale; zero on equal attention maps.
  np.testing.assert_allclose(ff.ft_loss(f32(5 * fs), f32(ft)),
                             ff.ft_loss(f32(fs), f32(ft)), rtol=RTOL)
  assert float(ff.ft_loss(f32(ft), f32(ft))) == 0.0


def test_paraphraser_and_translator_shapes_and_reconstruction():
  t = f32(rand(2, 2, 4, 4, 6))
  para = ff.Paraphraser(6)
  variables = numpy_variables(para, t)
  factor, rec = para.apply(variables, t)
  assert factor.shape == (2, 4, 4, 3) and rec.shape == t.shape
  np.testing.assert_array_equal(para.apply(variables, t, decode=False),
                                factor)
  np.testing.assert_allclose(ff.paraphraser_loss(rec, t),
                             np.mean((np.asarray(rec, np.float64) - t) ** 2),
                             rtol=RTOL)
  assert factor.min() >= -0.1 * abs(factor).max()  # LeakyReLU(0.1)
  trans = ff.Translator(3)
  s = f32(rand(3, 2, 4, 4, 5))
  out = trans.apply(numpy_variables(trans, s, train=False), s, train=False)
  assert out.shape == (2, 4, 4, 3)


# ---------------------------------------------------------------- KDSVD ---

def np_right_singular(f, n):
  """float64 SVD of each example's [H*W, C] map: the normalised n leading
  singular values and right singular vectors (sum of entries >= 0)."""
  b, h, w, c = f.shape
  sig, vecs = [], []
  for x in f.reshape(b, h * w, c):
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    v = vt[:n].T
    vecs.append(v * np.where(v.sum(0) < 0, -1.0, 1.0))
    sig.append(s[:n] / np.linalg.norm(s[:n]))
  return np.asarray(sig), np.asarray(vecs)


def np_kdsvd(gs, gt, k):
  """The KDSVD authors' loss: align the student's k + 3 vectors to the
  teacher's k, scale both by the teacher's singular values, compare the
  RBF kernels of consecutive layers' vectors; sum / B."""
  total, prev = 0.0, None
  for fs, ft in zip(gs, gt):
    st, vt = np_right_singular(ft, k)
    _, vs = np_right_singular(fs, k + 3)
    cos = np.einsum("bcm,bck->bmk", vs, vt)
    best = np.abs(cos).max(axis=1, keepdims=True)
    vs = vs @ np.where(np.abs(cos) == best, np.sign(cos), 0.0)
    vt, vs = vt * st[:, None], vs * st[:, None]
    if prev is not None:
      rbf = lambda a, p: np.exp(-(a[:, :, None] - p[:, None]) ** 2 / 8)
      total += ((rbf(vs, prev[0]) - rbf(vt, prev[1])) ** 2).sum()
    prev = (vs, vt)
  return total / gs[0].shape[0]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_numpy(k):
  gs = [rand(0, 3, 4, 4, 6), rand(1, 3, 4, 4, 8), rand(2, 3, 3, 3, 6)]
  gt = [rand(3, 3, 4, 4, 6), rand(4, 3, 4, 4, 8), rand(5, 3, 3, 3, 6)]
  loss = jax.jit(lambda a, b: ff.kdsvd_loss(a, b, k=k))  # one compile
  got = loss([f32(g) for g in gs], [f32(g) for g in gt])
  np.testing.assert_allclose(got, np_kdsvd(gs, gt, k), rtol=1e-4)
  assert float(loss([f32(g) for g in gt], [f32(g) for g in gt])) < 1e-9


def test_top_eigh_gradient_matches_jax_eigh_where_it_is_defined():
  a = rand(0, 2, 6, 6)
  gram = f32(a @ np.swapaxes(a, -1, -2))
  r, c = f32(rand(1, 6, 6)), f32(rand(2, 3))
  r = r + r.T

  def loss(eigh, g):
    w, v = eigh(g)
    return jnp.sum(w * c) + jnp.einsum("bij,ik,bkj->", v, r, v)

  ours = lambda g: ff.top_eigh(g, 3)
  theirs = lambda g: tuple(x[..., ::-1][..., :3]
                           for x in jnp.linalg.eigh(g))
  grad = lambda eigh: jax.jit(jax.grad(lambda g: loss(eigh, g)))(gram)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=1e-3, atol=1e-4)


def test_kdsvd_gradient_is_finite_with_dead_channels():
  """ReLU maps with all-zero channels give repeated zero singular values,
  where 1 / (s_i^2 - s_j^2) is infinite: KDSVD's gradient stays finite."""
  gs = [np.maximum(rand(0, 2, 4, 4, 6), 0), np.maximum(rand(1, 2, 4, 4, 8), 0)]
  gs[0][..., :3] = 0.0
  gs[1][..., 4:] = 0.0
  gt = [np.maximum(rand(2, 2, 4, 4, 6), 0), np.maximum(rand(3, 2, 4, 4, 8), 0)]
  grads = jax.jit(jax.grad(ff.kdsvd_loss))([f32(g) for g in gs],
                                          [f32(g) for g in gt])
  for g in grads:
    assert np.all(np.isfinite(g))
  assert any(float(jnp.abs(g).max()) > 0 for g in grads)
