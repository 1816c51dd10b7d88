"""Feature and relation losses against independent float64 numpy
re-implementations of the papers' formulas, plus their key properties."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.distill import feature_losses as fl

RTOL = 1e-5


def f32(x):
  return jnp.asarray(x, jnp.float32)


def rand(seed, *shape, scale=1.0, offset=0.0):
  return np.random.default_rng(seed).normal(offset, scale, shape)


def np_adaptive_pool(x, out):
  """torch's adaptive_avg_pool2d window rule, one output cell at a time."""
  b, h, w, c = x.shape
  y = np.zeros((b, out, out, c))
  for i in range(out):
    for j in range(out):
      r0, r1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
      c0, c1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
      y[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return y


def np_normalize(v):
  return v / max(np.linalg.norm(v), 1e-12)


def numpy_variables(module, *args, seed=0, **kwargs):
  """Random variables of `module`'s shapes drawn in numpy: jitting flax's
  initializers costs seconds of compilation on CPU; the tests need only
  some parameters, not the initializers' distribution."""
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: f32(rng.uniform(0.5, 1.5, s.shape)), shapes)


def smooth_l1(x):
  x = abs(x)
  return 0.5 * x * x if x < 1 else x - 0.5


# ---------------------------------------------------------------- helpers -

@pytest.mark.parametrize("h,out", [(8, 4), (7, 4), (7, 2), (5, 1), (3, 3)])
def test_adaptive_avg_pool_matches_torch_rule(h, out):
  x = rand(0, 2, h, h, 3)
  np.testing.assert_allclose(fl.adaptive_avg_pool(f32(x), (out, out)),
                             np_adaptive_pool(x, out), rtol=RTOL, atol=1e-6)


def test_nearest_resize_repeats_pixels():
  x = rand(1, 1, 2, 3, 1)
  y = np.asarray(fl.nearest_resize(f32(x), (4, 6)))
  np.testing.assert_allclose(y, np.repeat(np.repeat(x, 2, 1), 2, 2), rtol=1e-6)


# ---------------------------------------------------------------- AT ------

def np_at(fs_list, ft_list):
  total = 0.0
  for fs, ft in zip(fs_list, ft_list):
    if fs.shape[1] > ft.shape[1]:
      fs = np_adaptive_pool(fs, ft.shape[1])
    elif fs.shape[1] < ft.shape[1]:
      ft = np_adaptive_pool(ft, fs.shape[1])
    b = fs.shape[0]
    diff = [np_normalize((fs[i] ** 2).mean(-1).ravel())
            - np_normalize((ft[i] ** 2).mean(-1).ravel()) for i in range(b)]
    total += np.mean(np.square(diff))
  return total


def test_at_matches_numpy():
  fs = [rand(0, 4, 8, 8, 3), rand(1, 4, 4, 4, 5), rand(2, 4, 8, 8, 2)]
  ft = [rand(3, 4, 8, 8, 6), rand(4, 4, 4, 4, 7), rand(5, 4, 4, 4, 9)]
  got = fl.at_loss([f32(f) for f in fs], [f32(f) for f in ft])
  np.testing.assert_allclose(got, np_at(fs, ft), rtol=RTOL)


def test_at_scale_invariant_and_zero_on_match():
  fs, ft = rand(0, 4, 6, 6, 3), rand(1, 4, 6, 6, 5)
  base = fl.at_loss([f32(fs)], [f32(ft)])
  np.testing.assert_allclose(fl.at_loss([f32(7.0 * fs)], [f32(0.1 * ft)]),
                             base, rtol=1e-5)
  assert float(fl.at_loss([f32(fs)], [f32(3.0 * fs)])) < 1e-12


# ---------------------------------------------------------------- PKT -----

def np_pkt(s, t, eps=1e-7):
  def cond(x):
    b = len(x)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
    k = np.array([[(x[i] @ x[j] + 1) / 2 for j in range(b)] for i in range(b)])
    return k / k.sum(1, keepdims=True)
  ps, pt = cond(s), cond(t)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def test_pkt_matches_numpy_and_properties():
  s, t = rand(0, 8, 5), rand(1, 8, 7)
  np.testing.assert_allclose(fl.pkt_loss(f32(s), f32(t)), np_pkt(s, t),
                             rtol=RTOL)
  np.testing.assert_allclose(fl.pkt_loss(f32(4.0 * s), f32(t)), np_pkt(s, t),
                             rtol=RTOL)
  assert abs(float(fl.pkt_loss(f32(s), f32(2.0 * s)))) < 1e-7


# ---------------------------------------------------------------- SP ------

def np_sp(fs_list, ft_list):
  total = 0.0
  for fs, ft in zip(fs_list, ft_list):
    b = len(fs)
    qs, qt = fs.reshape(b, -1), ft.reshape(b, -1)
    gs = np.array([np_normalize(qs[i] @ qs.T) for i in range(b)])
    gt = np.array([np_normalize(qt[i] @ qt.T) for i in range(b)])
    total += np.linalg.norm(gt - gs, "fro") ** 2 / b**2
  return total


def test_sp_matches_numpy_and_properties():
  fs = [rand(0, 6, 4, 4, 3), rand(1, 6, 10)]
  ft = [rand(2, 6, 2, 2, 8), rand(3, 6, 12)]
  got = fl.sp_loss([f32(f) for f in fs], [f32(f) for f in ft])
  np.testing.assert_allclose(got, np_sp(fs, ft), rtol=RTOL)
  scaled = fl.sp_loss([f32(5.0 * f) for f in fs], [f32(f) for f in ft])
  np.testing.assert_allclose(scaled, got, rtol=RTOL)
  assert float(fl.sp_loss([f32(fs[0])], [f32(fs[0])])) < 1e-12


# ---------------------------------------------------------------- RKD -----

def np_rkd(s, t, w_d=25.0, w_a=50.0):
  b = len(s)

  def dists(x):
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)]
                  for i in range(b)])
    return d / (d.sum() / (b * (b - 1)))

  def angles(x):
    return np.array([[[np_normalize(x[j] - x[i]) @ np_normalize(x[k] - x[i])
                       for k in range(b)] for j in range(b)] for i in range(b)])
  ds, dt = dists(s), dists(t)
  loss_d = np.mean([smooth_l1(a - c) for a, c in zip(ds.ravel(), dt.ravel())])
  as_, at = angles(s), angles(t)
  loss_a = np.mean([smooth_l1(a - c) for a, c in zip(as_.ravel(), at.ravel())])
  return w_d * loss_d + w_a * loss_a


def test_rkd_matches_numpy():
  # Offset embeddings: Huber's linear branch is reached by some distances.
  s, t = rand(0, 6, 5, scale=3.0), rand(1, 6, 4, offset=2.0)
  s[0] *= 8.0
  np.testing.assert_allclose(fl.rkd_loss(f32(s), f32(t)), np_rkd(s, t),
                             rtol=RTOL)
  np.testing.assert_allclose(
      fl.rkd_loss(f32(s), f32(t), distance_weight=1.0, angle_weight=0.0),
      np_rkd(s, t, 1.0, 0.0), rtol=RTOL)


def test_rkd_invariances_and_finite_gradient():
  s, t = rand(0, 6, 4), rand(1, 6, 4)
  loss_and_grad = jax.jit(jax.value_and_grad(fl.rkd_loss))
  base = loss_and_grad(f32(s), f32(t))[0]
  np.testing.assert_allclose(loss_and_grad(f32(3.0 * s + 1.0), f32(t))[0],
                             base, rtol=1e-4)
  assert float(loss_and_grad(f32(0.5 * t), f32(t))[0]) < 1e-9
  s[1] = s[0]  # coincident embeddings: gradients stay finite
  assert np.all(np.isfinite(loss_and_grad(f32(s), f32(t))[1]))


def test_rkd_gram_form_on_wide_relu_features_in_float32():
  # Wide non-negative features far from the origin (a conv student's
  # flattened map): the Gram-form angles in float32 keep the float64
  # direct-difference value.
  rng = np.random.default_rng(3)
  base = rng.uniform(0.0, 4.0, 2048)
  s = np.maximum(base + rng.normal(0.0, 1.0, (12, 2048)), 0.0)
  t = np.maximum(base[:1024] + rng.normal(0.0, 0.5, (12, 1024)), 0.0)
  np.testing.assert_allclose(fl.rkd_loss(f32(s), f32(t)), np_rkd(s, t),
                             rtol=1e-4)


def test_rkd_gradient_matches_central_differences():
  s, t = rand(0, 5, 4, offset=1.0), rand(1, 5, 3)
  g = np.asarray(jax.grad(fl.rkd_loss)(f32(s), f32(t)))
  h = 1e-6
  for i, j in [(0, 0), (2, 1), (4, 3)]:
    up, down = s.copy(), s.copy()
    up[i, j] += h
    down[i, j] -= h
    want = (np_rkd(up, t) - np_rkd(down, t)) / (2 * h)
    np.testing.assert_allclose(g[i, j], want, rtol=2e-3, atol=1e-4)


def test_rkd_near_duplicates_stay_bounded():
  # Two near-identical and two identical rows: the angles they span are
  # zero (coincident), every other angle keeps its value.
  s, t = rand(0, 8, 300, offset=3.0), rand(1, 8, 200)
  s[1] = s[0] + 1e-6 * rand(2, 300)
  s[3] = s[2]
  loss, grad = jax.value_and_grad(fl.rkd_loss)(f32(s), f32(t))
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() < 1e3
  ref = np_rkd(s, t)
  # Differ at most by the 2 x 2 x 8 angle entries of the near pair.
  assert abs(float(loss) - ref) < 50.0 * 2 * 2 * 8 / 8 ** 3 * 2.0


# ---------------------------------------------------------------- VID -----

def np_vid(mu, t, alpha, eps=1e-5):
  var = np.log1p(np.exp(alpha)) + eps
  return np.mean(0.5 * ((t - mu) ** 2 / var + np.log(var)))


def test_vid_matches_numpy_and_optimum():
  mu, t, alpha = rand(0, 3, 4, 4, 5), rand(1, 3, 4, 4, 5), rand(2, 5)
  np.testing.assert_allclose(fl.vid_loss(f32(mu), f32(t), f32(alpha)),
                             np_vid(mu, t, alpha), rtol=RTOL)
  # The NLL is stationary at mu = t, and at sigma_c^2 = the channel's MSE.
  g_mu = jax.grad(fl.vid_loss)(f32(t), f32(t), f32(alpha))
  np.testing.assert_allclose(g_mu, 0.0, atol=1e-9)
  mse_C = ((t - mu) ** 2).mean(axis=(0, 1, 2))
  alpha_opt = np.log(np.expm1(mse_C - 1e-5))
  g_a = jax.grad(fl.vid_loss, argnums=2)(f32(mu), f32(t), f32(alpha_opt))
  np.testing.assert_allclose(g_a, 0.0, atol=1e-6)


def test_vid_regressor_shapes_and_initial_variance():
  m = fl.VIDRegressor(out_channels=6, mid_channels=6)
  x = jnp.ones((2, 4, 4, 3))
  variables = m.init(jax.random.PRNGKey(0), x)
  mean, alpha = m.apply(variables, x)
  assert mean.shape == (2, 4, 4, 6) and alpha.shape == (6,)
  np.testing.assert_allclose(fl.vid_variance(alpha), 5.0, rtol=1e-6)
  assert all(k.shape[:2] == (1, 1) for k in jax.tree.leaves(
      variables["params"]) if k.ndim == 4)


# ---------------------------------------------------------------- CRD -----

def np_crd(es, et, idx, neg, bank_s, bank_t, z_s, z_t, T=0.07, m=0.5,
           eps=1e-7):
  """The authors' ContrastMemory + ContrastLoss, written out in float64."""
  n, k = len(bank_s), neg.shape[1]
  full = np.concatenate([idx[:, None], neg], 1)
  out_s = np.exp(np.einsum("bkd,bd->bk", bank_t[full], es) / T)
  out_t = np.exp(np.einsum("bkd,bd->bk", bank_s[full], et) / T)
  z_s = out_s.mean() * n if z_s < 0 else z_s
  z_t = out_t.mean() * n if z_t < 0 else z_t

  def nce(p):
    mpn = k / n
    d1 = np.log(p[:, 0] / (p[:, 0] + mpn + eps))
    d0 = np.log(mpn / (p[:, 1:] + mpn + eps))
    return -(d1.sum() + d0.sum()) / len(p)
  loss = nce(out_s / z_s) + nce(out_t / z_t)
  new_s, new_t = bank_s.copy(), bank_t.copy()
  for b, i in enumerate(idx):
    new_s[i] = np_normalize(m * bank_s[i] + (1 - m) * es[b])
    new_t[i] = np_normalize(m * bank_t[i] + (1 - m) * et[b])
  return loss, new_s, new_t, z_s, z_t


def unit_rows(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_crd_loss_and_state_match_numpy_over_two_steps():
  n, d, b, k = 20, 8, 4, 6
  state = fl.crd_init_state(jax.random.PRNGKey(0), num_data=n, dim=d)
  ref = [np.asarray(state.student_bank_NxD, np.float64),
         np.asarray(state.teacher_bank_NxD, np.float64), -1.0, -1.0]
  step = jax.jit(fl.crd_loss)
  for seed, idx in ((0, [0, 5, 7, 19]), (1, [1, 5, 2, 3])):
    idx = np.array(idx)
    neg = np.asarray(fl.crd_sample_negatives(
        jax.random.PRNGKey(seed), jnp.asarray(idx), num_data=n, num_negatives=k))
    es, et = unit_rows(rand(seed, b, d)), unit_rows(rand(seed + 9, b, d))
    loss, state = step(f32(es), f32(et), jnp.asarray(idx), jnp.asarray(neg),
                       state)
    want, *ref = np_crd(es, et, idx, neg, *ref)
    np.testing.assert_allclose(loss, want, rtol=RTOL)
    np.testing.assert_allclose(state.student_bank_NxD, ref[0], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(state.teacher_bank_NxD, ref[1], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose([state.z_student, state.z_teacher], ref[2:],
                               rtol=RTOL)


def test_crd_memory_update_unit_rows_and_others_untouched():
  bank = rand(0, 10, 4)
  idx = np.array([2, 7])
  new = np.asarray(fl.crd_memory_update(f32(bank), jnp.asarray(idx),
                                        f32(rand(1, 2, 4)), 0.5))
  np.testing.assert_allclose(np.linalg.norm(new[idx], axis=1), 1.0, rtol=1e-6)
  rest = np.setdiff1d(np.arange(10), idx)
  np.testing.assert_allclose(new[rest], bank[rest], rtol=1e-6)


def test_crd_negatives_exclude_the_positive_and_cover_the_rest():
  n = 6
  idx = jnp.arange(n)
  neg = np.asarray(fl.crd_sample_negatives(jax.random.PRNGKey(0), idx,
                                           num_data=n, num_negatives=400))
  assert neg.min() >= 0 and neg.max() < n
  for i in range(n):
    assert set(neg[i]) == set(range(n)) - {i}


def test_crd_other_class_negatives():
  labels = np.array([2, 0, 1, 2, 0, 2, 1, 1, 0])
  table = fl.crd_class_table(labels)
  idx = np.arange(len(labels))
  neg = np.asarray(fl.crd_sample_other_class_negatives(
      jax.random.PRNGKey(0), jnp.asarray(labels[idx]), table,
      num_negatives=300))
  for i in idx:
    assert set(neg[i]) == set(np.flatnonzero(labels != labels[i]))


def test_crd_embed_and_gradient_reaches_both_heads():
  embed = fl.CRDEmbed(dim=16)
  fs, ft = f32(rand(0, 4, 2, 2, 3)), f32(rand(1, 4, 10))
  ps, pt = numpy_variables(embed, fs), numpy_variables(embed, ft, seed=1)
  state = fl.crd_init_state(jax.random.PRNGKey(2), num_data=12, dim=16)
  idx = jnp.array([0, 3, 4, 9])
  neg = fl.crd_sample_negatives(jax.random.PRNGKey(3), idx, num_data=12,
                                num_negatives=5)

  def loss(ps, pt):
    es = embed.apply(ps, fs)
    return fl.crd_loss(es, embed.apply(pt, ft), idx, neg, state)[0], es
  (_, es), (gs, gt) = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True))(ps, pt)
  assert es.shape == (4, 16)
  np.testing.assert_allclose(np.linalg.norm(es, axis=1), 1.0, rtol=1e-6)
  for g in (gs, gt):
    norm = sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(g))
    assert np.isfinite(norm) and norm > 0


# ---------------------------------------------------------------- ReviewKD

def np_hcl(fs_list, ft_list):
  total = 0.0
  for fs, ft in zip(fs_list, ft_list):
    h = fs.shape[1]
    num, weights = [np.mean((fs - ft) ** 2)], [1.0]
    for lvl in (4, 2, 1):
      if lvl < h:
        weights.append(weights[-1] / 2)
        num.append(weights[-1] * np.mean(
            (np_adaptive_pool(fs, lvl) - np_adaptive_pool(ft, lvl)) ** 2))
    total += sum(num) / sum(weights)
  return total


def test_hcl_matches_numpy_and_zero_on_match():
  shapes = [(2, 8, 8, 3), (2, 7, 7, 4), (2, 2, 2, 5), (2, 1, 1, 6)]
  fs = [rand(i, *s) for i, s in enumerate(shapes)]
  ft = [rand(i + 10, *s) for i, s in enumerate(shapes)]
  np.testing.assert_allclose(
      fl.hcl_loss([f32(f) for f in fs], [f32(f) for f in ft]),
      np_hcl(fs, ft), rtol=RTOL)
  assert float(fl.hcl_loss([f32(f) for f in fs], [f32(f) for f in fs])) == 0.0


def test_review_fusion_shapes_and_review_direction():
  feats = [f32(rand(0, 2, 8, 8, 4)), f32(rand(1, 2, 4, 4, 6)),
           f32(rand(2, 2, 1, 1, 8))]
  m = fl.ReviewKDFusion(mid_channels=5, out_channels=(3, 7, 9))
  variables = numpy_variables(m, feats, train=False)
  assert "att_conv" not in variables["params"]["abf2"]
  assert "att_conv" in variables["params"]["abf0"]
  outs, _ = jax.eval_shape(lambda v: m.apply(
      v, feats, train=True, mutable=["batch_stats"]), variables)
  assert [o.shape for o in outs] == [(2, 8, 8, 3), (2, 4, 4, 7), (2, 1, 1, 9)]

  def out_sum(deep, shallow, which):
    return jnp.sum(m.apply(variables, [shallow, feats[1], deep],
                           train=False)[which])
  # The shallowest output reviews the deepest stage; the deepest output
  # sees only its own stage.
  g_deep, g_shallow = jax.jit(lambda d, s: (
      jax.grad(out_sum)(d, s, 0), jax.grad(out_sum, argnums=1)(d, s, 2)))(
          feats[2], feats[0])
  assert float(jnp.abs(g_deep).sum()) > 0
  assert float(jnp.abs(g_shallow).sum()) == 0.0
  resized = fl.ReviewKDFusion(mid_channels=5, out_channels=(3, 7, 9),
                              out_hw=((16, 16), (8, 8), (2, 2)))
  outs = jax.eval_shape(lambda v: resized.apply(v, feats, train=False),
                        variables)
  assert [o.shape[1:3] for o in outs] == [(16, 16), (8, 8), (2, 2)]


def test_losses_jit():
  fs, ft = [f32(rand(0, 4, 4, 4, 3))], [f32(rand(1, 4, 4, 4, 5))]
  for f in (fl.at_loss, fl.sp_loss, fl.hcl_loss):
    if f is fl.hcl_loss:
      ft = [f32(rand(1, 4, 4, 4, 3))]
    np.testing.assert_allclose(jax.jit(f)(fs, ft), f(fs, ft), rtol=1e-6)


# ---------------------------------------------------------------- CC ------

def np_cc(es, et):
  """RepDistiller's CC: sum over neighbouring examples i, i + 1 of
  <|e_s^i - e_t^i|, |e_s^(i+1) - e_t^(i+1)|>, over B - 1 pairs."""
  d = np.abs(es - et)
  return sum(d[i] @ d[i + 1] for i in range(len(d) - 1)) / (len(d) - 1)


def test_cc_matches_numpy_zero_on_match_and_heads_train():
  es, et = rand(0, 6, 5), rand(1, 6, 5, scale=2.0)
  np.testing.assert_allclose(fl.cc_loss(f32(es), f32(et)), np_cc(es, et),
                             rtol=RTOL)
  assert float(fl.cc_loss(f32(es), f32(es))) == 0.0
  # The linear head: x W + b on the flattened feature, no normalisation.
  embed = fl.LinearEmbed(dim=4)
  x = f32(rand(2, 3, 2, 2, 3))
  p = numpy_variables(embed, x)
  w, b = (np.asarray(a, np.float64) for a in (p["params"]["linear"]["kernel"],
                                             p["params"]["linear"]["bias"]))
  np.testing.assert_allclose(embed.apply(p, x),
                             np.asarray(x, np.float64).reshape(3, -1) @ w + b,
                             rtol=RTOL)


# ---------------------------------------------------------------- NST -----

def np_nst_pair(fs, ft):
  """Huang & Wang's squared MMD with k(x, y) = (x . y)^2 between the
  channels (normalised over positions) of one pair, over the batch."""
  if fs.shape[1] > ft.shape[1]:
    fs = np_adaptive_pool(fs, ft.shape[1])
  elif fs.shape[1] < ft.shape[1]:
    ft = np_adaptive_pool(ft, fs.shape[1])
  total = 0.0
  for b in range(fs.shape[0]):
    s = [np_normalize(fs[b, ..., j].ravel()) for j in range(fs.shape[-1])]
    t = [np_normalize(ft[b, ..., i].ravel()) for i in range(ft.shape[-1])]
    k = lambda xs, ys: np.mean([(x @ y) ** 2 for x in xs for y in ys])
    total += k(t, t) + k(s, s) - 2 * k(s, t)
  return total / fs.shape[0]


def test_nst_matches_numpy_and_properties():
  fs = [rand(0, 3, 8, 8, 4), rand(1, 3, 4, 4, 6)]
  ft = [rand(2, 3, 4, 4, 5), rand(3, 3, 4, 4, 2)]
  got = fl.nst_loss([f32(f) for f in fs], [f32(f) for f in ft])
  np.testing.assert_allclose(
      got, sum(np_nst_pair(a, b) for a, b in zip(fs, ft)), rtol=RTOL)
  # Zero on identical maps; invariant to a positive scale of a channel.
  assert abs(float(fl.nst_loss([f32(fs[1])], [f32(fs[1])]))) < 1e-6
  scaled = fs[1] * np.array([1.0, 3.0, 0.5, 2.0, 1.0, 7.0])
  np.testing.assert_allclose(fl.nst_loss([f32(scaled)], [f32(ft[1])]),
                             fl.nst_loss([f32(fs[1])], [f32(ft[1])]),
                             rtol=RTOL)


# ---------------------------------------------------------------- FSP -----

def np_fsp(fs_list, ft_list):
  """Yim et al.'s FSP matrices G_ij = mean_{h,w} top_i bottom_j of
  consecutive layers (the larger map pooled), RepDistiller's mean of the
  squared differences per pair, summed over pairs."""
  def g(bot, top):
    if bot.shape[1] > top.shape[1]:
      bot = np_adaptive_pool(bot, top.shape[1])
    elif bot.shape[1] < top.shape[1]:
      top = np_adaptive_pool(top, bot.shape[1])
    b, h, w = bot.shape[:3]
    out = np.zeros((b, top.shape[-1], bot.shape[-1]))
    for n in range(b):
      for i in range(top.shape[-1]):
        for j in range(bot.shape[-1]):
          out[n, i, j] = np.sum(top[n, ..., i] * bot[n, ..., j]) / (h * w)
    return out
  return sum(np.mean((g(fs_list[l], fs_list[l + 1])
                      - g(ft_list[l], ft_list[l + 1])) ** 2)
             for l in range(len(fs_list) - 1))


def test_fsp_matches_numpy_and_properties():
  shapes = [(2, 8, 8, 3), (2, 4, 4, 5), (2, 4, 4, 2)]
  fs = [rand(i, *s) for i, s in enumerate(shapes)]
  ft = [rand(i + 10, *s, scale=2.0) for i, s in enumerate(shapes)]
  got = fl.fsp_loss([f32(f) for f in fs], [f32(f) for f in ft])
  np.testing.assert_allclose(got, np_fsp(fs, ft), rtol=RTOL)
  assert fl.fsp_matrix(f32(fs[0]), f32(fs[1])).shape == (2, 5, 3)
  assert float(fl.fsp_loss([f32(f) for f in fs], [f32(f) for f in fs])) == 0.0
