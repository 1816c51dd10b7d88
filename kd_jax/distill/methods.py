"""The distillation methods: name -> what the train step needs.

`METHODS` is a plain dict. Each `Method` says which loss the step computes
from the student's (and teacher's) logits, whether the method needs a
teacher, which temperature it uses, which extra parts it trains, and whether
a sweep may vmap it. The step (step.py), the stage loop (stage.py), the
pipeline (train.py) and sweeps (sweep.py) read these fields and compare no
method names. Adding a logit-based method: its loss in losses.py, an entry
here, a config in configs/, tests.

Every loss has the signature
  loss(kd, student_logits, teacher_logits, labels_B, *, temperature, alpha,
       epoch, class_weights=None) -> scalar
where `kd` is the run's `KDSpec` (static numbers) and `temperature`, `alpha`
and `epoch` are arrays (traced per cell in a vmapped sweep). `class_weights`
(`[C]` or None, config.loss.class_weights) weights the hard-label
cross-entropy term of every method (losses.py); soft terms stay unweighted.

A feature or relation method (AT, PKT, SP, RKD, VID, CRD, ReviewKD) has a
`FeatureTerm`: its loss is that of the logit method
config.kd.feature_logit_method ('none': the cross-entropy; 'vanilla': the
CRD benchmark's 'CRD+KD' rows) plus beta times the feature term, which
kd_modules' module of the term computes from the student's and the
teacher's features (step.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from kd_jax.distill import losses

# How a method's temperature is set:
#   'one'      no temperature (cross-entropy); the metric reads 1.
#   'fixed'    config.kd.temperature (an array: sweeps vary it).
#   'learned'  CTKD global: T = t_start + t_end * sigmoid(raw), raw trained
#              adversarially (`params['temperature']`, a scalar).
#   'instance' CTKD instance-wise: an MLP predicts T per example
#              (`params['temperature']`, kd_modules.InstanceTemperature).
TEMPERATURES = ("one", "fixed", "learned", "instance")


@dataclasses.dataclass(frozen=True)
class KDSpec:
  """The static numbers of config.kd the losses read (hashable: the step
  closes over it)."""
  logit_standardization: bool = False
  dkd_alpha: float = 1.0
  dkd_beta: float = 8.0
  dkd_warmup_epochs: int = 0
  dist_beta: float = 1.0
  dist_gamma: float = 1.0
  subclasses: int = 2
  subclass_aux_weight: float = 1.0
  subclass_aux_temperature: float = 1.0
  t_start: float = 1.0
  t_end: float = 20.0
  lambda_min: float = 0.0
  lambda_max: float = 1.0
  epoch_cap: int = 10
  hint_weight: float = 100.0
  t_squared: bool = True
  feature_logit_method: str = "none"
  feature_weight: float = 0.0  # 0: the method's FeatureTerm.weight

  @classmethod
  def from_config(cls, config) -> "KDSpec":
    kd = config.kd
    return cls(**{f.name: type(f.default)(kd[f.name])
                  for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class FeatureTerm:
  """A feature or relation distillation term: the kd_modules module that
  computes it (`kd_modules.FEATURE_MODULES` key), its default weight beta
  and its default layer pairs (config_lib.feature_layer_pairs):
    'stages'             the deepest stage maps of both models, paired from
                         the last (as many as the shallower model has);
    'last_stage'         the last stage map of each;
    'stages_and_pooled'  the stages, then 'pre_logits';
    'pooled'             'pre_logits' (the embedding before the classifier).
  `maps`: its layers must be `[B, H, W, C]` maps; `one_pair`: it takes
  exactly one layer pair."""
  module: str
  weight: float
  layers: str
  maps: bool = False
  one_pair: bool = False


@dataclasses.dataclass(frozen=True)
class Method:
  loss: Callable
  teacher: bool  # distils from a frozen teacher
  temperature: str = "fixed"  # one of TEMPERATURES
  vmappable: bool = False  # a sweep may train its cells under jax.vmap
  # Deep mutual learning: the loss sees the whole cohort's logits [K, B, C]
  # and the config's peers are trained beside the student.
  cohort: bool = False
  # FitNets stage 1 trains on the hint term alone, at weight 1.
  hint_only: bool = False
  user_facing: bool = True  # False: a stage the pipeline runs by itself
  # A feature method's logit loss may be this method's (feature_logit_method).
  logit_term: bool = False
  feature: FeatureTerm | None = None

  @property
  def learns_temperature(self) -> bool:
    return self.temperature in ("learned", "instance")


def _cross_entropy(kd, s, t, labels_B, *, temperature, alpha, epoch,
                   class_weights=None):
  del kd, t, temperature, alpha, epoch
  return losses.cross_entropy(s, labels_B, class_weights)


def _subclass_teacher(kd, s, t, labels_B, *, temperature, alpha, epoch,
                      class_weights=None):
  del t, temperature, alpha, epoch
  return losses.subclass_teacher_loss(
      s, labels_B, subclasses=kd.subclasses, aux_weight=kd.subclass_aux_weight,
      aux_temperature=kd.subclass_aux_temperature, class_weights=class_weights)


def _hinton(kd, s, t, labels_B, *, temperature, alpha, epoch,
            class_weights=None):
  del epoch
  return losses.kd_loss(s, t, labels_B, temperature=temperature, alpha=alpha,
                        standardize_logits=kd.logit_standardization,
                        class_weights=class_weights, t_squared=kd.t_squared)


def _conditional(kd, s, t, labels_B, *, temperature, alpha, epoch,
                 class_weights=None):
  del alpha, epoch
  return losses.conditional_kd_loss(s, t, labels_B, temperature=temperature,
                                    standardize_logits=kd.logit_standardization,
                                    class_weights=class_weights)


def _dkd(kd, s, t, labels_B, *, temperature, alpha, epoch,
         class_weights=None):
  """CE + warm-up * DKD (Zhao et al. 2022): the KD part ramps up linearly
  over `dkd_warmup_epochs`, as in the authors' training recipe."""
  del alpha
  warm = (jnp.minimum(1.0, (epoch + 1.0) / kd.dkd_warmup_epochs)
          if kd.dkd_warmup_epochs else 1.0)
  return losses.cross_entropy(s, labels_B, class_weights) + warm * (
      losses.dkd_loss(s, t, labels_B, temperature=temperature,
                      alpha=kd.dkd_alpha, beta=kd.dkd_beta,
                      standardize_logits=kd.logit_standardization))


def _dist(kd, s, t, labels_B, *, temperature, alpha, epoch,
          class_weights=None):
  del alpha, epoch
  return losses.cross_entropy(s, labels_B, class_weights) + losses.dist_loss(
      s, t, temperature=temperature, beta=kd.dist_beta, gamma=kd.dist_gamma)


def _subclass(kd, s, t, labels_B, *, temperature, alpha, epoch,
              class_weights=None):
  del epoch
  return losses.subclass_kd_loss(s, t, labels_B, subclasses=kd.subclasses,
                                 temperature=temperature, alpha=alpha,
                                 class_weights=class_weights)


def _mutual(kd, cohort_KxBxC, t, labels_B, *, temperature, alpha, epoch,
            class_weights=None):
  """Deep mutual learning: the sum of the members' losses, so that each
  member gets the gradient of its own loss in one step."""
  del kd, t, alpha, epoch
  return jnp.sum(losses.mutual_learning_losses(
      cohort_KxBxC, labels_B, temperature=temperature,
      class_weights=class_weights))


def _feature_logits(kd, s, t, labels_B, *, temperature, alpha, epoch,
                    class_weights=None):
  """A feature method's logit part: the loss of kd.feature_logit_method."""
  return METHODS[kd.feature_logit_method].loss(
      kd, s, t, labels_B, temperature=temperature, alpha=alpha, epoch=epoch,
      class_weights=class_weights)


def _no_logit_loss(kd, s, t, labels_B, *, temperature, alpha, epoch,
                   class_weights=None):
  del kd, s, t, labels_B, temperature, alpha, epoch, class_weights
  return jnp.float32(0.0)


def _feature_method(module, weight, layers, **kw) -> Method:
  return Method(_feature_logits, teacher=True,
                feature=FeatureTerm(module, weight, layers, **kw))


METHODS = {
    "none": Method(_cross_entropy, teacher=False, temperature="one",
                   vmappable=True, logit_term=True),
    "vanilla": Method(_hinton, teacher=True, vmappable=True, logit_term=True),
    "conditional": Method(_conditional, teacher=True, vmappable=True,
                          logit_term=True),
    "ctkd": Method(_hinton, teacher=True, temperature="learned",
                   vmappable=True),
    "ctkd_instance": Method(_hinton, teacher=True, temperature="instance"),
    "fitnets": Method(_hinton, teacher=True),
    "dkd": Method(_dkd, teacher=True, vmappable=True, logit_term=True),
    "dist": Method(_dist, teacher=True, vmappable=True, logit_term=True),
    "subclass": Method(_subclass, teacher=True),
    "dml": Method(_mutual, teacher=False, cohort=True),
    # Feature and relation methods; beta: the CRD benchmark's (Tian et al.
    # 2020, RepDistiller) for AT, PKT, SP, RKD (on w_d L_dist + w_a L_angle,
    # w_d = 25, w_a = 50), VID and CRD; ReviewKD's own (Chen et al. 2021).
    # Layers as theirs: AT and VID the stage outputs, SP the last stage,
    # PKT, RKD and CRD the penultimate embedding, ReviewKD every stage and
    # the embedding.
    "at": _feature_method("at", 1000.0, "stages", maps=True),
    "pkt": _feature_method("pkt", 30000.0, "pooled"),
    "sp": _feature_method("sp", 3000.0, "last_stage"),
    "rkd": _feature_method("rkd", 1.0, "pooled"),
    "vid": _feature_method("vid", 1.0, "stages", maps=True),
    "crd": _feature_method("crd", 0.8, "pooled", one_pair=True),
    "reviewkd": _feature_method("reviewkd", 1.0, "stages_and_pooled"),
    # Stages the pipeline runs by itself: the subclass teacher, and FitNets
    # stage 1 (the student up to its guided layer, trained on hints alone).
    "subclass_teacher": Method(_subclass_teacher, teacher=False,
                               temperature="one", user_facing=False),
    "hint": Method(_no_logit_loss, teacher=True, hint_only=True,
                   user_facing=False),
}

USER_METHODS = tuple(k for k, m in METHODS.items() if m.user_facing)
TEACHER_METHODS = tuple(k for k in USER_METHODS if METHODS[k].teacher)
LOGIT_TERMS = tuple(k for k, m in METHODS.items() if m.logit_term)


def get(name: str) -> Method:
  return METHODS[name]


def feature_weight(kd: KDSpec, method: Method) -> float:
  """beta of `method`'s feature term: config.kd.feature_weight, or (0) the
  method's default."""
  return kd.feature_weight if kd.feature_weight > 0 else method.feature.weight
