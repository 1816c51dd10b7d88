"""Distillation losses: pure, jit-able functions of arrays.

Shapes: logits are `[B, C]`, labels are integer `[B]`; every loss returns a
scalar mean over the batch. KL divergences are summed over classes and
averaged over the batch ('batchmean').

References (equation numbers are the seeds' report 002):
  * Hinton et al. 2015, "Distilling the knowledge in a neural network" (eq. 4).
  * Meng et al. 2019, "Conditional teacher-student learning".
  * Li et al. 2023, "Curriculum temperature for knowledge distillation"
    (CTKD; eqs. 5-7).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear")


def cross_entropy(logits_BxC, labels_B):
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_BxC, labels_B).mean()


def kl_per_example(student_logits_BxC, teacher_logits_BxC, temperature):
  """KL(softmax(z_t/T) || softmax(z_s/T)) summed over classes -> `[B]`.

  `temperature` may be a scalar or a `[B]` vector (per-example T).
  """
  t = jnp.asarray(temperature, jnp.float32)
  t = t[..., None] if t.ndim == 1 else t
  logp_t = jax.nn.log_softmax(teacher_logits_BxC / t, axis=-1)
  logp_s = jax.nn.log_softmax(student_logits_BxC / t, axis=-1)
  return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)


def kd_loss(student_logits, teacher_logits, labels, *, temperature, alpha):
  """Hinton KD: mean_i[alpha T^2 KL_i + (1 - alpha) CE_i]."""
  t = jnp.asarray(temperature, jnp.float32)
  kl_B = kl_per_example(student_logits, teacher_logits, t)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  return jnp.mean(alpha * t**2 * kl_B + (1.0 - alpha) * ce_B)


def conditional_kd_loss(student_logits, teacher_logits, labels, *, temperature):
  """Conditional teacher-student learning (Meng et al.).

  mean_i[c_i T^2 KL_i + (1 - c_i) CE_i] with c_i = 1 where the teacher's
  top-1 prediction equals the label: the student imitates the teacher only
  where the teacher is right and learns from the hard label elsewhere.
  """
  t = jnp.asarray(temperature, jnp.float32)
  c_B = (jnp.argmax(teacher_logits, axis=-1) == labels).astype(jnp.float32)
  kl_B = kl_per_example(student_logits, teacher_logits, t)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  return jnp.mean(c_B * t**2 * kl_B + (1.0 - c_B) * ce_B)


def ctkd_temperature(raw, *, t_start=1.0, t_end=20.0):
  """CTKD's global temperature: T = t_start + t_end * sigmoid(raw)."""
  return t_start + t_end * jax.nn.sigmoid(raw)


def curriculum_lambda(epoch, *, schedule, lambda_min=0.0, lambda_max=1.0,
                      epoch_cap=10):
  """CTKD's curriculum weight lambda at (0-based) `epoch` (seeds' eq. 7).

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


# Name -> loss used by the trainer; CTKD is `kd_loss` with a learned T.
METHODS = ("none", "vanilla", "conditional", "ctkd")
