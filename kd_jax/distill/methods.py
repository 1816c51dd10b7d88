"""The distillation methods: name -> what the train step needs.

`METHODS` is a plain dict and the only place a method's name lives. Each
`Method` declares everything other modules need to know: the loss the step
computes, whether it needs a teacher, how its temperature is set, whether it
reads alpha, its own config.kd fields (`Field`: name, default, whether a
sweep may vary it), which shared options apply to it (logit
standardisation, t_squared, class weights), the extra parts it trains and
whether a sweep may vmap it. `KDSpec`, config defaults and validation
(config_lib), the step's hyperparameters, the sweeps' vmapped fields, the
study report's columns and the figures' grouping derive from these entries;
no other module compares method names. Adding a logit-based method: its
loss in losses.py, an entry here, a config in configs/, a test.

Every loss has the signature
  loss(kd, student_logits, teacher_logits, labels_B, *, temperature, alpha,
       epoch, class_weights=None) -> scalar
where `kd` is the run's `KDSpec` (static numbers) and `temperature`, `alpha`
and `epoch` are arrays (traced per cell in a vmapped sweep). `class_weights`
(`[C]` or None, config.loss.class_weights) weights the hard-label
cross-entropy term of every method (losses.py); soft terms stay unweighted.

A feature or relation method (AT, PKT, SP, RKD, VID, CRD, ReviewKD, CC,
NST, OFD, KDSVD, FT) has a `FeatureTerm`: its loss is that of the logit
method config.kd.feature_logit_method ('none': the cross-entropy;
'vanilla': the CRD benchmark's 'CRD+KD' rows) plus beta times the feature
term, which kd_modules' module of the term computes from the student's and
the teacher's features (step.py). A method with a `Pretrain` (FSP, AB, FT)
has a stage of its own that the pipeline runs first, on that stage's
feature term alone: FSP's and AB's student stage starts from its student
weights and computes kd.feature_logit_method's loss; FT's trains a
paraphraser there, which its student stage's own feature term reads.
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

# The pipeline's own stages and the scratch baseline, by role.
SCRATCH = "none"  # the student trained on labels alone
SUBCLASS_TEACHER = "subclass_teacher"
HINT = "hint"  # FitNets stage 1


@dataclasses.dataclass(frozen=True)
class Field:
  """A config.kd field of a method's own: its default and whether a sweep
  may vary it (then the step reads it as an array, one value per cell)."""
  name: str
  default: float | int | str
  sweep: bool = False


@dataclasses.dataclass(frozen=True)
class FeatureTerm:
  """A feature or relation distillation term: the kd_modules module that
  computes it (`kd_modules.FEATURE_MODULES` key), its default weight beta
  and its default layer pairs (config_lib.feature_layer_pairs):
    'stages'             the deepest stage maps of both models, paired from
                         the last (as many as the shallower model has);
    'last_stage'         the last stage map of each;
    'stages_and_pooled'  the stages, then 'pre_logits';
    'pooled'             'pre_logits' (the embedding before the classifier);
    'preact_stages'      the stage maps before their last ReLU
                         ('<stage>_preact'), paired from the last.
  `maps`: its layers must be `[B, H, W, C]` maps; `one_pair`: it takes
  exactly one layer pair; `warmup`: the name of its own Field holding E,
  over which beta ramps up linearly (`feature_weight`); '' = constant;
  `same_channels`: each pair's layers must have as many channels;
  `teacher_bn`: each teacher layer must have a BatchNorm before its ReLU
  (models.bn_before_relu).
  Layer rule 'stem_and_stages': the stem (where both have one), then the
  stages."""
  module: str
  weight: float
  layers: str
  maps: bool = False
  one_pair: bool = False
  warmup: str = ""
  same_channels: bool = False
  teacher_bn: bool = False


@dataclasses.dataclass(frozen=True)
class Pretrain:
  """A stage the pipeline runs before the student's (RepDistiller's `init`
  stage): the entry `method` (its feature term alone) for config.kd.<epochs>
  epochs at config.kd.<lr> ('': config.learning_rate). `hands_over` what
  the student stage takes from it:
    'student'  its student weights (FSP, AB: the student stage starts
               from them);
    'feature'  its feature module's params, frozen in the student stage's
               feature module (kd_modules.PRETRAINED; FT's paraphraser);
               the student starts afresh."""
  method: str
  epochs: str
  lr: str = ""
  hands_over: str = "student"


@dataclasses.dataclass(frozen=True)
class Method:
  loss: Callable
  teacher: bool  # distils from a frozen teacher
  temperature: str = "fixed"  # one of TEMPERATURES
  alpha: bool = False  # reads config.kd.alpha
  fields: tuple[Field, ...] = ()  # its own config.kd fields
  # Shared options that change its loss (an option it ignores is refused).
  logit_standardization: bool = False
  t_squared: bool = False
  class_weights: bool = True
  # kd.ce_weight / kd.kd_weight set its CE and soft-term weights
  # (`loss_weights`; unset: 1 - alpha and alpha, or 1 and 1 without alpha).
  loss_weights: bool = False
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
  hints: str = "optional"  # FitNets hint layers: 'optional' | 'required' | 'refused'
  # Teacher and student have num_classes * kd.subclasses logits.
  subclass_logits: bool = False
  # A stage before the student's (its logit loss is then
  # kd.feature_logit_method's, as a feature method's).
  pretrain: Pretrain | None = None

  @property
  def learns_temperature(self) -> bool:
    return self.temperature in ("learned", "instance")

  @property
  def sweep_fields(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.fields if f.sweep)


def loss_weights(kd) -> dict:
  """kd.ce_weight and kd.kd_weight as a loss's keywords when set (>= 0,
  both: config validation); {} leaves the loss its own weights."""
  if kd.ce_weight < 0:
    return {}
  return {"ce_weight": kd.ce_weight, "kd_weight": kd.kd_weight}


def _ce_plus(kd, ce, soft):
  """CE + soft term of a method without alpha (DKD, DIST), or
  ce_weight * CE + kd_weight * soft when kd's weights are set."""
  w = loss_weights(kd)
  return w["ce_weight"] * ce + w["kd_weight"] * soft if w else ce + soft


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
                        class_weights=class_weights, t_squared=kd.t_squared,
                        **loss_weights(kd))


def _reverse_kl(kd, s, t, labels_B, *, temperature, alpha, epoch,
                class_weights=None):
  del epoch
  return losses.reverse_kd_loss(s, t, labels_B, temperature=temperature,
                                alpha=alpha,
                                standardize_logits=kd.logit_standardization,
                                class_weights=class_weights,
                                t_squared=kd.t_squared, **loss_weights(kd))


def _conditional(kd, s, t, labels_B, *, temperature, alpha, epoch,
                 class_weights=None):
  del alpha, epoch
  return losses.conditional_kd_loss(s, t, labels_B, temperature=temperature,
                                    standardize_logits=kd.logit_standardization,
                                    class_weights=class_weights)


def linear_warmup(epoch, epochs):
  """min(1, (E + 1) / epochs) at the 0-based epoch E (mdistiller's min(E /
  epochs, 1) with its 1-based E); 1 when `epochs` is 0."""
  return jnp.minimum(1.0, (epoch + 1.0) / epochs) if epochs else 1.0


def _dkd(kd, s, t, labels_B, *, temperature, alpha, epoch,
         class_weights=None):
  """CE + warm-up * DKD (Zhao et al. 2022): the KD part ramps up linearly
  over `dkd_warmup_epochs`, as in the authors' training recipe."""
  del alpha
  warm = linear_warmup(epoch, kd.dkd_warmup_epochs)
  return _ce_plus(kd, losses.cross_entropy(s, labels_B, class_weights), warm * (
      losses.dkd_loss(s, t, labels_B, temperature=temperature,
                      alpha=kd.dkd_alpha, beta=kd.dkd_beta,
                      standardize_logits=kd.logit_standardization)))


def _dist(kd, s, t, labels_B, *, temperature, alpha, epoch,
          class_weights=None):
  del alpha, epoch
  return _ce_plus(kd, losses.cross_entropy(s, labels_B, class_weights),
                  losses.dist_loss(s, t, temperature=temperature,
                                   beta=kd.dist_beta, gamma=kd.dist_gamma,
                                   exact_pearson=kd.dist_exact_pearson))


def _subclass(kd, s, t, labels_B, *, temperature, alpha, epoch,
              class_weights=None):
  del epoch
  return losses.subclass_kd_loss(s, t, labels_B, subclasses=kd.subclasses,
                                 temperature=temperature, alpha=alpha,
                                 class_weights=class_weights,
                                 **loss_weights(kd))


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


def _feature_method(module, weight, layers, fields=(), **kw) -> Method:
  return Method(_feature_logits, teacher=True, fields=fields,
                feature=FeatureTerm(module, weight, layers, **kw))


def _pretrained(stage, epochs, default_epochs, module, layers,
                fields=(), **kw) -> tuple[Method, Method]:
  """(the user's entry, its pre-training stage's entry): the stage trains
  the student on the feature term alone (beta 1) for config.kd.<epochs>
  epochs, then the student trains on kd.feature_logit_method's loss."""
  return (Method(_feature_logits, teacher=True,
                 fields=(Field(epochs, default_epochs),) + fields,
                 pretrain=Pretrain(stage, epochs)),
          _stage_entry(FeatureTerm(module, 1.0, layers, **kw)))


def _stage_entry(term: FeatureTerm) -> Method:
  """A pre-training stage: its feature term alone, at weight 1."""
  return Method(_no_logit_loss, teacher=True, user_facing=False,
                class_weights=False, feature=term)


# Hinton KD's soft term: T^2 scaling, logit standardisation and the CE /
# KD weights apply.
_HINTON = dict(alpha=True, t_squared=True, logit_standardization=True,
               loss_weights=True)
# CTKD (Li et al. 2023): T = t_start + t_end * sigmoid(raw), raw trained
# adversarially under a curriculum weight lambda(epoch) in [lambda_min,
# lambda_max] that reaches lambda_max at epoch_cap. The authors start raw at
# 1, T ~ 15.6 (official code): the curriculum lowers or raises it from a
# soft start.
_CTKD = (Field("t_start", 1.0), Field("t_end", 20.0), Field("init_raw", 1.0),
         Field("lambda_min", 0.0), Field("lambda_max", 1.0),
         Field("epoch_cap", 10), Field("temperature_lr", 0.05),
         Field("temperature_momentum", 0.9))
# Subclass distillation (Mueller et al. 2020): teacher and student have
# num_classes * subclasses logits; the teacher's auxiliary loss spreads
# its subclasses.
_SUBCLASS = (Field("subclasses", 2), Field("subclass_aux_weight", 1.0),
             Field("subclass_aux_temperature", 1.0))

# FSP (Yim et al. 2017): RepDistiller's `init` stage trains the student on
# the FSP matrices of consecutive layers (stem and stages, equal channels)
# for 30 epochs; the student stage then adds no FSP term (its loss_kd = 0).
_FSP, _FSP_STAGE = _pretrained("fsp_init", "fsp_init_epochs", 30, "fsp",
                               "stem_and_stages", maps=True,
                               same_channels=True)

# AB (Heo et al. AAAI 2019) as RepDistiller runs it: an `init` stage of
# 30 epochs trains the student's body (and connectors where shapes differ)
# on the activation-boundary loss of the pre-ReLU stage maps alone; the
# student stage starts from it with no AB term (its loss_kd = 0).
_AB, _AB_STAGE = _pretrained("ab_init", "ab_init_epochs", 30, "ab",
                             "preact_stages", maps=True)
# FT (Kim et al. 2018) as RepDistiller runs it: the paraphraser learns to
# reconstruct the teacher's last stage map for 30 epochs at lr 0.01 (its
# rate for the ResNet and WRN students), then the student stage adds beta
# 200 x the factor loss (translator of the student's last stage map).
_FT = Method(_feature_logits, teacher=True,
             fields=(Field("ft_init_epochs", 30), Field("ft_init_lr", 0.01)),
             feature=FeatureTerm("ft", 200.0, "last_stage", maps=True,
                                 one_pair=True),
             pretrain=Pretrain("ft_init", "ft_init_epochs", lr="ft_init_lr",
                               hands_over="feature"))
_FT_STAGE = _stage_entry(FeatureTerm("ft_paraphraser", 1.0, "last_stage",
                                     maps=True, one_pair=True))

METHODS = {
    SCRATCH: Method(_cross_entropy, teacher=False, temperature="one",
                    vmappable=True, logit_term=True),
    "vanilla": Method(_hinton, teacher=True, vmappable=True, logit_term=True,
                      **_HINTON),
    "reverse_kl": Method(_reverse_kl, teacher=True, vmappable=True,
                         logit_term=True, **_HINTON),
    "conditional": Method(_conditional, teacher=True, vmappable=True,
                          logit_term=True, logit_standardization=True),
    "ctkd": Method(_hinton, teacher=True, temperature="learned",
                   vmappable=True, fields=_CTKD, **_HINTON),
    "ctkd_instance": Method(_hinton, teacher=True, temperature="instance",
                            fields=_CTKD + (Field("temperature_hidden", 64),),
                            **_HINTON),
    "fitnets": Method(_hinton, teacher=True, hints="required", **_HINTON),
    # DKD (Zhao et al. 2022): CE + alpha' TCKD + beta' NCKD, the KD part
    # warmed up linearly over dkd_warmup_epochs.
    "dkd": Method(_dkd, teacher=True, vmappable=True, logit_term=True,
                  logit_standardization=True, loss_weights=True,
                  fields=(Field("dkd_alpha", 1.0, sweep=True),
                          Field("dkd_beta", 8.0, sweep=True),
                          Field("dkd_warmup_epochs", 0))),
    # DIST (Huang et al. 2022): CE + T^2 (beta inter + gamma intra), the
    # Pearson correlation in the authors' form (|a| |b| + 1e-8) unless
    # dist_exact_pearson (losses.pearson_rows).
    "dist": Method(_dist, teacher=True, vmappable=True, logit_term=True,
                   loss_weights=True,
                   fields=(Field("dist_beta", 1.0, sweep=True),
                           Field("dist_gamma", 1.0, sweep=True),
                           Field("dist_exact_pearson", False))),
    "subclass": Method(_subclass, teacher=True, alpha=True, fields=_SUBCLASS,
                       hints="refused", subclass_logits=True,
                       loss_weights=True),
    # Deep mutual learning: the cohort is the student plus kd.peers (comma
    # list of models; '' = one peer with the student's architecture).
    "dml": Method(_mutual, teacher=False, cohort=True,
                  fields=(Field("peers", ""),)),
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
    # CRD (Tian et al. 2020): negatives per example (capped at the training
    # set size - 1), embedding size, NCE temperature, memory-bank momentum.
    "crd": _feature_method("crd", 0.8, "pooled", one_pair=True, fields=(
        Field("crd_negatives", 16384), Field("crd_dim", 128),
        Field("crd_temperature", 0.07), Field("crd_momentum", 0.5))),
    # ReviewKD: beta ramps up linearly over the first 20 epochs, as the
    # authors' CIFAR recipe (mdistiller's REVIEWKD.WARMUP_EPOCHS).
    "reviewkd": _feature_method(
        "reviewkd", 1.0, "stages_and_pooled", warmup="reviewkd_warmup_epochs",
        fields=(Field("reviewkd_warmup_epochs", 20),)),
    # CC (Peng et al. 2019) in RepDistiller's form on linear embeddings
    # (cc_dim) of the penultimate feature, beta 0.02; NST (Huang & Wang
    # 2017) on the stage outputs, beta 50: the CRD benchmark's.
    "cc": _feature_method("cc", 0.02, "pooled", one_pair=True,
                          fields=(Field("cc_dim", 128),)),
    "nst": _feature_method("nst", 50.0, "stages", maps=True),
    "fsp": _FSP,
    "fsp_init": _FSP_STAGE,
    "ab": _AB,
    "ab_init": _AB_STAGE,
    "ft": _FT,
    "ft_init": _FT_STAGE,
    # OFD (Heo et al. ICCV 2019) as mdistiller: the pre-ReLU stage maps
    # through 1x1 conv-BN connectors, margins from the teacher's BN before
    # each ReLU (`teacher_bn`), beta 1e-3 (the authors' sum / 1000).
    "ofd": _feature_method("ofd", 1e-3, "preact_stages", maps=True,
                           teacher_bn=True),
    # KDSVD (Lee et al. 2018): k leading singular vectors per stage output
    # (equal channels per pair, as the authors' layout needs), beta 1: the
    # authors' and mdistiller's.
    "kdsvd": _feature_method("kdsvd", 1.0, "stages", maps=True,
                             same_channels=True,
                             fields=(Field("kdsvd_k", 1),)),
    # Stages the pipeline runs by itself: the subclass teacher, and FitNets
    # stage 1 (the student up to its guided layer, trained on hints alone).
    SUBCLASS_TEACHER: Method(_subclass_teacher, teacher=False,
                             temperature="one", user_facing=False,
                             fields=_SUBCLASS, subclass_logits=True),
    HINT: Method(_no_logit_loss, teacher=True, hint_only=True,
                 user_facing=False, class_weights=False),
}

USER_METHODS = tuple(k for k, m in METHODS.items() if m.user_facing)
TEACHER_METHODS = tuple(k for k in USER_METHODS if METHODS[k].teacher)
LOGIT_TERMS = tuple(k for k, m in METHODS.items() if m.logit_term)
VMAPPABLE = tuple(k for k in USER_METHODS if METHODS[k].vmappable)


def _own_fields() -> dict[str, Field]:
  """Every method's own fields by name (methods may share one: it must
  have one default)."""
  out: dict[str, Field] = {}
  for name, method in METHODS.items():
    for f in method.fields:
      if f.name in out and out[f.name] != f:
        raise ValueError(f"method {name!r} redeclares kd.{f.name} differently")
      out[f.name] = f
  return out


OWN_FIELDS = _own_fields()
# A sweep may vary these of any method (the step reads them as arrays).
SWEEP_FIELDS = tuple(n for n, f in OWN_FIELDS.items() if f.sweep)
# config.kd fields the losses read beside the methods' own (ce_weight,
# kd_weight: -1 = unset, `loss_weights`).
_SHARED_SPEC_FIELDS = (("logit_standardization", False), ("t_squared", True),
                       ("ce_weight", -1.0), ("kd_weight", -1.0),
                       ("hint_weight", 100.0), ("feature_logit_method", SCRATCH),
                       ("feature_weight", 0.0))  # 0: FeatureTerm.weight


def _spec_field(name, default):
  return (name, type(default), dataclasses.field(default=default))


def _kd_spec_class():
  cls = dataclasses.make_dataclass(
      "KDSpec", [_spec_field(n, d) for n, d in _SHARED_SPEC_FIELDS] +
      [_spec_field(n, f.default) for n, f in OWN_FIELDS.items()], frozen=True,
      namespace={"from_config": classmethod(
          lambda cls, config: kd_spec(config.kd))})
  cls.__doc__ = ("The static numbers of config.kd the losses read "
                 "(hashable: the step closes over it); in a sweep the fields "
                 "in SWEEP_FIELDS are replaced by each cell's arrays.")
  cls.__module__ = __name__
  return cls


KDSpec = _kd_spec_class()


def kd_spec(kd_config) -> KDSpec:
  """The KDSpec of config.kd (a ConfigDict or dict)."""
  return KDSpec(**{f.name: type(f.default)(kd_config[f.name])
                   for f in dataclasses.fields(KDSpec)})


def with_swept(kd: KDSpec, swept: dict) -> KDSpec:
  """`kd` with the swept fields' per-cell values (arrays inside jit)."""
  return dataclasses.replace(kd, **swept) if swept else kd


def logit_method(kd_config) -> Method:
  """The entry whose logit loss a run computes: the method's own, or a
  feature method's (or a pre-trained one's) kd.feature_logit_method."""
  method = METHODS[kd_config["method"]]
  if method.feature is not None or method.pretrain is not None:
    return METHODS[kd_config["feature_logit_method"]]
  return method


def feature_term(name: str) -> FeatureTerm | None:
  """The feature term of `name`, or (without one) of its pre-training
  stage: what its layers, beta and modules are checked against."""
  method = METHODS[name]
  if method.feature is None and method.pretrain is not None:
    return METHODS[method.pretrain.method].feature
  return method.feature


def pretrain_epoch_fields() -> tuple[str, ...]:
  """The config.kd fields holding a pre-training stage's epochs."""
  return tuple(dict.fromkeys(m.pretrain.epochs for m in METHODS.values()
                             if m.pretrain is not None))


def report_columns(kd_config) -> dict:
  """What a run's method reads of T, alpha and the CTKD schedule: {'temperature':
  'fixed' | 'learned' | None, 'alpha': bool, 'schedule': bool}; alpha is
  not read where kd.ce_weight / kd.kd_weight replace it."""
  logit = logit_method(kd_config)
  t = logit.temperature
  weighted = logit.loss_weights and kd_config.get("ce_weight", -1.0) >= 0
  return {"temperature": "learned" if logit.learns_temperature else
          ("fixed" if t == "fixed" else None),
          "alpha": logit.alpha and not weighted,
          "schedule": logit.learns_temperature}


def learns_temperature(name: str) -> bool:
  return name in METHODS and METHODS[name].learns_temperature


def fixed_t_and_alpha(name: str) -> bool:
  """The method reads config.kd.temperature and config.kd.alpha (a T x
  alpha grid of it is a heatmap)."""
  return (name in METHODS and METHODS[name].temperature == "fixed"
          and METHODS[name].alpha)


def is_scratch(name: str) -> bool:
  return name == SCRATCH


def label(name: str) -> str:
  """The name reports and figures show: 'scratch' for the baseline."""
  return "scratch" if is_scratch(name) else name


def get(name: str) -> Method:
  return METHODS[name]


def feature_weight(kd: KDSpec, method: Method, epoch=None):
  """beta of `method`'s feature term: config.kd.feature_weight, or (0) the
  method's default; with `epoch` (0-based, may be traced), times the
  term's linear warm-up at that epoch (`FeatureTerm.warmup`)."""
  term = method.feature
  beta = kd.feature_weight if kd.feature_weight > 0 else term.weight
  if epoch is None or not term.warmup:
    return beta
  return beta * linear_warmup(epoch, getattr(kd, term.warmup))
