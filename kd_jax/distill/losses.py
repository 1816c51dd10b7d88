"""Distillation losses: pure, jit-able functions of arrays.

Shapes: logits are `[B, C]`, labels are integer `[B]`; every loss returns a
scalar mean over the batch. KL divergences are summed over classes and
averaged over the batch ('batchmean').

Class weights: every loss with a hard-label cross-entropy term takes an
optional `class_weights` `[C]`. The CE term then becomes the weighted mean
sum_i w_{y_i} CE_i / sum_i w_{y_i} (PyTorch's `F.cross_entropy(weight=w)`
with reduction='mean'); the soft (KL and other distillation) terms stay
unweighted batch means. `None` computes exactly the unweighted loss.

References:
  * Hinton et al. 2015, "Distilling the knowledge in a neural network": the
    soft-target loss alpha T^2 KL + (1 - alpha) CE.
  * Meng et al. 2019, "Conditional teacher-student learning".
  * Li et al. 2023, "Curriculum temperature for knowledge distillation"
    (CTKD): adversarially learned global and instance-wise temperature,
    with a curriculum weight on its gradient.
  * Romero et al. 2015, "FitNets: hints for thin deep nets", with the 1x1
    adaptation layer of Chen et al. 2017, "Learning efficient object
    detection models with knowledge distillation".
  * Zhao et al. 2022, "Decoupled knowledge distillation" (DKD).
  * Huang et al. 2022, "Knowledge distillation from a stronger teacher" (DIST).
  * Sun et al. 2024, "Logit standardization in knowledge distillation".
  * Mueller, Kornblith, Hinton 2020, "Subclass distillation".
  * Zhang et al. 2018, "Deep mutual learning" (DML).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("cosine", "linear")


def cross_entropy(logits_BxC, labels_B, class_weights=None):
  """Mean softmax cross-entropy with integer labels; with `class_weights`
  `[C]` the weighted mean sum_i w_{y_i} CE_i / sum_i w_{y_i}, as PyTorch's
  `F.cross_entropy(weight=w, reduction='mean')`."""
  return weighted_mean(optax.softmax_cross_entropy_with_integer_labels(
      logits_BxC, labels_B), labels_B, class_weights)


def weighted_mean(values_B, labels_B, class_weights=None):
  """mean_i values_i, or with `class_weights` `[C]` the mean weighted by
  each example's class weight, sum_i w_{y_i} v_i / sum_i w_{y_i}."""
  if class_weights is None:
    return jnp.mean(values_B)
  w_B = jnp.asarray(class_weights, jnp.float32)[labels_B]
  return jnp.sum(w_B * values_B) / jnp.sum(w_B)


def balanced_class_weights(labels_N, num_classes):
  """Inverse class frequency, w_c = N / (C * n_c) (scikit-learn's
  `compute_class_weight('balanced')`): each class then carries the same
  total weight in an epoch. Every class must occur in `labels_N`."""
  counts = np.bincount(np.asarray(labels_N), minlength=num_classes)
  return len(labels_N) / (num_classes * counts.astype(np.float64))


def _soft_plus_ce(soft_B, ce_B, labels_B, class_weights):
  """mean_i soft_i + (weighted) mean_i ce_i; without weights the single
  mean of the sum that the unweighted losses have always computed."""
  if class_weights is None:
    return jnp.mean(soft_B + ce_B)
  return jnp.mean(soft_B) + weighted_mean(ce_B, labels_B, class_weights)


def term_weights(alpha, ce_weight=None, kd_weight=None):
  """(CE weight, soft-term weight): (1 - alpha, alpha), Hinton's convex
  shorthand, or (ce_weight, kd_weight) when both are given (mdistiller's
  CE_WEIGHT and KD_WEIGHT; Sun et al. 2024 train with 0.1 and 9)."""
  if (ce_weight is None) != (kd_weight is None):
    raise ValueError("give both ce_weight and kd_weight, or neither")
  if ce_weight is None:
    return 1.0 - alpha, alpha
  return ce_weight, kd_weight


def kl_per_example(student_logits_BxC, teacher_logits_BxC, temperature):
  """KL(softmax(z_t/T) || softmax(z_s/T)) summed over classes -> `[B]`.

  `temperature` may be a scalar or a `[B]` vector (per-example T).
  """
  t = jnp.asarray(temperature, jnp.float32)
  t = t[..., None] if t.ndim == 1 else t
  logp_t = jax.nn.log_softmax(teacher_logits_BxC / t, axis=-1)
  logp_s = jax.nn.log_softmax(student_logits_BxC / t, axis=-1)
  return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)


def kd_loss(student_logits, teacher_logits, labels, *, temperature, alpha,
            standardize_logits=False, class_weights=None, t_squared=True,
            ce_weight=None, kd_weight=None):
  """Hinton KD: mean_i[alpha T^2 KL_i + (1 - alpha) CE_i].

  `ce_weight` and `kd_weight` (both or neither) replace 1 - alpha and alpha:
  mean_i[kd_weight T^2 KL_i + ce_weight CE_i] (`term_weights`).
  `temperature`: scalar, or `[B]` per example (instance-wise CTKD).
  `t_squared=False` drops the T^2 factor, mean_i[alpha KL_i + (1 - alpha)
  CE_i]: the objective some reproductions state (a weighted average of the
  two cross-entropies); Hinton et al.'s T^2 keeps the soft term's gradient
  scale independent of T.
  `standardize_logits`: z-score both logits inside the KL term only (Sun et
  al. 2024); the cross-entropy always sees the raw student logits.
  `class_weights` `[C]`: the CE mean is weighted (module docstring).
  """
  t = jnp.asarray(temperature, jnp.float32)
  kl_B = kl_per_example(*_maybe_standardize(
      student_logits, teacher_logits, standardize_logits), t)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  scale = t**2 if t_squared else 1.0
  w_ce, w_kd = term_weights(alpha, ce_weight, kd_weight)
  return _soft_plus_ce(w_kd * scale * kl_B, w_ce * ce_B, labels,
                       class_weights)


def reverse_kd_loss(student_logits, teacher_logits, labels, *, temperature,
                    alpha, standardize_logits=False, class_weights=None,
                    t_squared=True, ce_weight=None, kd_weight=None):
  """Reverse-KL KD: mean_i[alpha T^2 KL(p_s || p_t)_i + (1 - alpha) CE_i].

  The KL of Hinton KD with its arguments swapped, p = softmax(z / T): the
  student is pulled towards the teacher's modes (mode seeking) rather than
  made to cover all of its mass (Gu et al. 2024, "MiniLLM", for the
  reverse KL in distillation). `temperature`, `t_squared`,
  `standardize_logits`, `class_weights`, `ce_weight` and `kd_weight` as in
  `kd_loss`.
  """
  t = jnp.asarray(temperature, jnp.float32)
  s, te = _maybe_standardize(student_logits, teacher_logits, standardize_logits)
  kl_B = kl_per_example(te, s, t)  # KL(p_s || p_t): teacher in the q slot
  ce_B = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  scale = t**2 if t_squared else 1.0
  w_ce, w_kd = term_weights(alpha, ce_weight, kd_weight)
  return _soft_plus_ce(w_kd * scale * kl_B, w_ce * ce_B, labels,
                       class_weights)


def conditional_kd_loss(student_logits, teacher_logits, labels, *, temperature,
                        standardize_logits=False, class_weights=None):
  """Conditional teacher-student learning (Meng et al.).

  mean_i[c_i T^2 KL_i + (1 - c_i) CE_i] with c_i = 1 where the teacher's
  top-1 prediction equals the label: the student imitates the teacher only
  where the teacher is right and learns from the hard label elsewhere.
  `class_weights` `[C]`: the (1 - c_i) CE_i terms get the weighted mean.
  """
  t = jnp.asarray(temperature, jnp.float32)
  c_B = (jnp.argmax(teacher_logits, axis=-1) == labels).astype(jnp.float32)
  kl_B = kl_per_example(*_maybe_standardize(
      student_logits, teacher_logits, standardize_logits), t)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  return _soft_plus_ce(c_B * t**2 * kl_B, (1.0 - c_B) * ce_B, labels,
                       class_weights)


def ctkd_temperature(raw, *, t_start=1.0, t_end=20.0):
  """CTKD's global temperature: T = t_start + t_end * sigmoid(raw)."""
  return t_start + t_end * jax.nn.sigmoid(raw)


def curriculum_lambda(epoch, *, schedule, lambda_min=0.0, lambda_max=1.0,
                      epoch_cap=10):
  """CTKD's curriculum weight lambda at (0-based) `epoch` (Li et al. 2023).

  'cosine': lmin + (lmax - lmin) * (1 + cos((1 + min(E, Ecap)/Ecap) pi)) / 2
  'linear': lmin + (lmax - lmin) * min(E, Ecap)/Ecap
  Works on Python numbers and on traced arrays (used inside optax schedules).
  """
  if schedule not in SCHEDULES:
    raise ValueError(
        f"unknown CTKD schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
  frac = jnp.minimum(jnp.asarray(epoch, jnp.float32), epoch_cap) / epoch_cap
  if schedule == "cosine":
    return lambda_min + 0.5 * (lambda_max - lambda_min) * (
        1.0 + jnp.cos((1.0 + frac) * math.pi))
  return lambda_min + (lambda_max - lambda_min) * frac


def standardize(logits_BxC, eps=1e-7):
  """Sun et al. 2024: per-sample z-score of the logits, (z - mean) / std.

  std is the unbiased (ddof=1) standard deviation over classes, as in the
  authors' code; the temperature softmax is then applied to the result.
  """
  mean = jnp.mean(logits_BxC, axis=-1, keepdims=True)
  std = jnp.std(logits_BxC, axis=-1, keepdims=True, ddof=1)
  return (logits_BxC - mean) / (eps + std)


def _maybe_standardize(student_logits, teacher_logits, on):
  if on:
    return standardize(student_logits), standardize(teacher_logits)
  return student_logits, teacher_logits


def dkd_loss(student_logits, teacher_logits, labels, *, temperature,
             alpha=1.0, beta=8.0, standardize_logits=False):
  """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD, each * T^2.

  TCKD = KL(b_t || b_s) over the binary (target, not-target) probabilities
  at temperature T; NCKD = KL(p~_t || p~_s) over the non-target classes
  renormalised among themselves. The cross-entropy term is added by the
  trainer (weight 1, as in the paper). Batch mean.
  """
  t = jnp.asarray(temperature, jnp.float32)
  student_logits, teacher_logits = _maybe_standardize(
      student_logits, teacher_logits, standardize_logits)
  num_classes = student_logits.shape[-1]
  gt_BxC = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  zs, zt = student_logits / t, teacher_logits / t
  ps, pt = jax.nn.softmax(zs, -1), jax.nn.softmax(zt, -1)
  eps = 1e-12
  bs = jnp.stack([jnp.sum(ps * gt_BxC, -1), jnp.sum(ps * (1 - gt_BxC), -1)], -1)
  bt = jnp.stack([jnp.sum(pt * gt_BxC, -1), jnp.sum(pt * (1 - gt_BxC), -1)], -1)
  tckd_B = jnp.sum(bt * (jnp.log(bt + eps) - jnp.log(bs + eps)), -1)
  # Non-target distributions: mask the target logit out of the softmax.
  big = 1000.0
  logq_s = jax.nn.log_softmax(zs - big * gt_BxC, -1)
  logq_t = jax.nn.log_softmax(zt - big * gt_BxC, -1)
  nckd_B = jnp.sum(jnp.exp(logq_t) * (logq_t - logq_s) * (1 - gt_BxC), -1)
  return t**2 * jnp.mean(alpha * tckd_B + beta * nckd_B)


def _norm_rows(x_BxC):
  """The L2 norm of each row -> [B]; a zero row has norm 0 and gradient 0
  (torch's subgradient), not sqrt's NaN (a batch of one has zero columns)."""
  sq = jnp.sum(jnp.square(x_BxC), axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def pearson_rows(a_BxC, b_BxC, *, exact=False, eps=1e-8):
  """Pearson correlation of each row of `a` with the same row of `b` -> [B]:
  the cosine similarity of the mean-centred rows.

  Default: the DIST authors' `pearson_correlation`, <a, b> / (|a| |b| +
  eps); the eps pulls a pair towards 0 once |a| |b| is not far above 1e-8
  (a near one-hot teacher at T = 1 has class columns of that size).
  `exact`: each norm clamped at eps separately, <a, b> / (max(|a|, eps)
  max(|b|, eps)), the exact correlation whenever both norms exceed eps
  (torch's `F.cosine_similarity`).
  """
  a = a_BxC - a_BxC.mean(-1, keepdims=True)
  b = b_BxC - b_BxC.mean(-1, keepdims=True)
  na, nb = _norm_rows(a), _norm_rows(b)
  dot = jnp.sum(a * b, -1)
  if exact:
    return dot / (jnp.maximum(na, eps) * jnp.maximum(nb, eps))
  return dot / (na * nb + eps)


def dist_loss(student_logits, teacher_logits, *, temperature, beta=1.0,
              gamma=1.0, exact_pearson=False):
  """DIST (Huang et al. 2022): T^2 (beta * inter + gamma * intra).

  With p = softmax(z / T): inter = 1 - mean_i pearson(p_s[i, :], p_t[i, :])
  (relations between classes, per sample); intra = 1 - mean_c
  pearson(p_s[:, c], p_t[:, c]) (relations between samples, per class).
  pearson is the authors' form (|a| |b| + 1e-8 in the denominator), which
  their published numbers come from; `exact_pearson` clamps each norm
  instead (`pearson_rows`). The cross-entropy term is added by the trainer.
  """
  t = jnp.asarray(temperature, jnp.float32)
  ps = jax.nn.softmax(student_logits / t, -1)
  pt = jax.nn.softmax(teacher_logits / t, -1)
  inter = 1.0 - jnp.mean(pearson_rows(ps, pt, exact=exact_pearson))
  intra = 1.0 - jnp.mean(pearson_rows(ps.T, pt.T, exact=exact_pearson))
  return t**2 * (beta * inter + gamma * intra)


def hint_loss(adapted_student_feature, teacher_feature):
  """FitNets hint loss: mean squared error between the adapted guided-layer
  output r(v_g(x)) and the teacher's hint-layer output u_h(x), averaged over
  every element (batch, positions, channels)."""
  return jnp.mean(jnp.square(adapted_student_feature - teacher_feature))


def subclass_to_class_logits(logits_BxCS, subclasses: int):
  """Class logits from subclass logits: log-sum-exp over each class's group
  of `subclasses` consecutive logits (class c owns c*S .. c*S + S - 1)."""
  b, cs = logits_BxCS.shape
  return jax.nn.logsumexp(
      logits_BxCS.reshape(b, cs // subclasses, subclasses), axis=-1)


def subclass_aux_loss(logits_BxCS, *, temperature=1.0, eps=1e-8):
  """Subclass distillation's auxiliary loss (Mueller et al. 2020).

  The subclass logits are normalised over the batch (zero mean, unit
  variance per logit, no learned scale); with v_i the normalised vector of
  example i, L = -mean_i log(exp(v_i.v_i / T) / sum_j exp(v_i.v_j / T)).
  It is low when examples are told apart by their subclass logits, which
  makes the teacher spread a class over its subclasses.
  """
  mean = jnp.mean(logits_BxCS, axis=0, keepdims=True)
  std = jnp.std(logits_BxCS, axis=0, keepdims=True)
  v = (logits_BxCS - mean) / (std + eps)
  sim_BxB = (v @ v.T) / temperature
  return jnp.mean(jax.nn.logsumexp(sim_BxB, axis=-1) - jnp.diagonal(sim_BxB))


def subclass_teacher_loss(logits_BxCS, labels, *, subclasses, aux_weight=1.0,
                          aux_temperature=1.0, class_weights=None):
  """Teacher objective: CE on the grouped class logits (weighted by the
  `[C]` `class_weights`, if any) + weight * aux."""
  return cross_entropy(subclass_to_class_logits(logits_BxCS, subclasses),
                       labels, class_weights) + aux_weight * subclass_aux_loss(
                           logits_BxCS, temperature=aux_temperature)


def subclass_kd_loss(student_logits_BxCS, teacher_logits_BxCS, labels, *,
                     subclasses, temperature, alpha, class_weights=None,
                     ce_weight=None, kd_weight=None):
  """Student objective: alpha T^2 KL over the C*S subclass distribution at
  temperature T + (1 - alpha) CE on the student's grouped class logits (the
  CE weighted by the `[C]` `class_weights`, if any); `ce_weight` and
  `kd_weight` as in `kd_loss`."""
  t = jnp.asarray(temperature, jnp.float32)
  kl_B = kl_per_example(student_logits_BxCS, teacher_logits_BxCS, t)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(
      subclass_to_class_logits(student_logits_BxCS, subclasses), labels)
  w_ce, w_kd = term_weights(alpha, ce_weight, kd_weight)
  return _soft_plus_ce(w_kd * t**2 * kl_B, w_ce * ce_B, labels,
                       class_weights)


def mutual_learning_losses(logits_KxBxC, labels, *, temperature=1.0,
                           class_weights=None):
  """Deep mutual learning: one loss per cohort member k,
  L_k = CE(z_k, y) + T^2 / (K - 1) * sum_{l != k} KL(p_l^T || p_k^T),
  the peers' distributions p_l held fixed (stop-gradient). -> `[K]`.
  With `class_weights` `[C]` each member's CE is the weighted mean.

  The sum over k has, for every member, the gradient of its own L_k: the
  cohort is updated simultaneously in one step.
  """
  k = logits_KxBxC.shape[0]
  t = jnp.asarray(temperature, jnp.float32)
  fixed = jax.lax.stop_gradient(logits_KxBxC)
  out = []
  for i in range(k):
    ce = cross_entropy(logits_KxBxC[i], labels, class_weights)
    kl = sum(jnp.mean(kl_per_example(logits_KxBxC[i], fixed[j], t))
             for j in range(k) if j != i)
    out.append(ce + t**2 * kl / (k - 1))
  return jnp.stack(out)
