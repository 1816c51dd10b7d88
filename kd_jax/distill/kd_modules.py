"""Small trainable modules some distillation methods add next to the student.

They are trained with the student (their parameters sit beside it in
`TrainState.params`) and are never part of the saved inference model.
  * `HintAdapter` (FitNets + Chen et al.): 1x1 convolution mapping the
    student's guided-layer channels to the teacher's hint-layer channels (a
    Dense layer for flat `[B, D]` features).
  * `InstanceTemperature` (instance-wise CTKD): an MLP over the teacher's and
    student's logits predicting one temperature per example,
    T_i = t_start + t_end * sigmoid(mlp([z_t, z_s])_i).
  * The feature terms (`FEATURE_MODULES`, one per feature or relation
    method): `module.apply(variables, student_feats, teacher_feats, batch,
    train=...)` -> the unweighted term, from lists of paired features
    (config_lib.feature_layer_pairs). Their parameters (VID's regressors,
    CRD's embedding heads, ReviewKD's fusion, AB's and OFD's connectors,
    FT's translator) train with the student; their other collections
    (ReviewKD's 'batch_stats', CRD's 'memory' banks, FT's frozen
    paraphraser in PRETRAINED) are the step's to update and live in the
    train state, so a resumed run continues them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.distill import boundary_losses as bl
from kd_jax.distill import factor_losses as ff
from kd_jax.distill import feature_losses as fl
from kd_jax.errors import UserError


class HintAdapter(nn.Module):
  out_channels: int

  @nn.compact
  def __call__(self, feature):
    if feature.ndim == 4:  # [B, H, W, C] -> [B, H, W, C_teacher]
      return nn.Conv(self.out_channels, (1, 1), name="conv")(feature)
    return nn.Dense(self.out_channels, name="dense")(feature)


class InstanceTemperature(nn.Module):
  hidden: int = 64
  t_start: float = 1.0
  t_end: float = 20.0

  @nn.compact
  def __call__(self, teacher_logits_BxC, student_logits_BxC):
    # The logits are inputs only: the temperature module learns from its own
    # (reversed) gradient, it does not steer the networks through its input.
    x = jax.lax.stop_gradient(
        jnp.concatenate([teacher_logits_BxC, student_logits_BxC], -1))
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    raw_B = nn.Dense(1, name="out")(h)[:, 0]
    return self.t_start + self.t_end * jax.nn.sigmoid(raw_B)


class FeatureContext(NamedTuple):
  """What a feature term's module is built from besides config.kd."""
  train_labels: Any  # int [N] (CRD's class table)
  # Per layer pair: (gamma_C, beta_C) of the BatchNorm before the teacher
  # layer's ReLU (models.bn_before_relu; OFD's margin), or None.
  teacher_bn: tuple = ()


# The collection of a feature module's weights trained by its method's
# pre-training stage (methods.Pretrain, hands_over='feature'): the
# pipeline fills it from that stage's params; the step never updates it.
PRETRAINED = "pretrained"


class FeatureBatch(NamedTuple):
  """What a feature term reads of the batch besides the features."""
  index_B: Any  # int [B]: each example's row in the training split (CRD)
  label_B: Any  # int [B]
  key: Any  # PRNG key of the step (CRD's negatives)


def flat(feat):
  return feat.reshape(feat.shape[0], -1)


def as_map(feat):
  """`[B, D]` -> `[B, 1, 1, D]` (a pooled embedding as a 1x1 map)."""
  return feat if feat.ndim == 4 else feat.reshape(feat.shape[0], 1, 1, -1)


class AttentionTransfer(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return fl.at_loss(student_feats, teacher_feats)


class ProbabilisticTransfer(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return sum(fl.pkt_loss(flat(s), flat(t))
               for s, t in zip(student_feats, teacher_feats))


class SimilarityPreserving(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return fl.sp_loss(student_feats, teacher_feats)


class RelationalKD(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return sum(fl.rkd_loss(flat(s), flat(t))
               for s, t in zip(student_feats, teacher_feats))


class VariationalInformation(nn.Module):
  """VID, summed over the pairs: one regressor per pair, from the student's
  channels to the teacher's (mid channels: the teacher's, as the authors),
  on the maps pooled to the smaller of the two sizes."""

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    total = 0.0
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
      s, t = fl.pool_to_match(s, t)
      mean, raw_variance = fl.VIDRegressor(
          t.shape[-1], t.shape[-1], name=f"regressor{i}")(s)
      total = total + fl.vid_loss(mean, t, raw_variance)
    return total


class ContrastiveRepresentation(nn.Module):
  """CRD on one layer pair: embedding heads for both networks, the memory
  banks of all `num_data` training examples (collection 'memory') and K
  negatives per example drawn from the other classes (the authors'
  default), with replacement. `class_table`: feature_losses.crd_class_table
  of the training labels."""
  num_data: int
  num_negatives: int
  class_table: Any
  dim: int = 128
  temperature: float = 0.07
  momentum: float = 0.5

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    (s,), (t,) = student_feats, teacher_feats
    emb_s = fl.CRDEmbed(self.dim, name="student_embed")(s)
    emb_t = fl.CRDEmbed(self.dim, name="teacher_embed")(t)
    banks = self.variable("memory", "banks", lambda: fl.crd_init_state(
        self.make_rng("params"), num_data=self.num_data, dim=self.dim))
    negatives = fl.crd_sample_other_class_negatives(
        batch.key, batch.label_B, self.class_table,
        num_negatives=self.num_negatives)
    loss, new = fl.crd_loss(emb_s, emb_t, batch.index_B, negatives,
                            banks.value,
                            temperature=self.temperature,
                            momentum=self.momentum)
    if not self.is_initializing():  # init returns the banks as drawn
      banks.value = new
    return loss


class KnowledgeReview(nn.Module):
  """ReviewKD: the fusion chain maps the student's features (shallow to
  deep; flat ones as 1x1 maps) to the teacher's shapes, then the HCL loss.
  Middle channels min(512, the student's deepest channels), as the
  authors'."""

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    s = [as_map(f) for f in student_feats]
    t = [as_map(f) for f in teacher_feats]
    fusion = fl.ReviewKDFusion(
        mid_channels=min(512, s[-1].shape[-1]),
        out_channels=tuple(f.shape[-1] for f in t),
        out_hw=tuple(tuple(f.shape[1:3]) for f in t), name="fusion")
    return fl.hcl_loss(fusion(s, train=train), t)


class CorrelationCongruence(nn.Module):
  """CC on one layer pair: linear embedding heads (`dim`, RepDistiller's
  128) for both networks, trained with the student, then `cc_loss`."""
  dim: int = 128

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    (s,), (t,) = student_feats, teacher_feats
    return fl.cc_loss(fl.LinearEmbed(self.dim, name="student_embed")(s),
                      fl.LinearEmbed(self.dim, name="teacher_embed")(t))


class NeuronSelectivity(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return fl.nst_loss(student_feats, teacher_feats)


class FlowOfSolution(nn.Module):
  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return fl.fsp_loss(student_feats, teacher_feats)


class ActivationBoundaries(nn.Module):
  """AB over the pre-ReLU pairs: the student's map through a connector
  where its channels or height differ from the teacher's (RepDistiller's
  rule; else as it is), then `ab_loss`."""

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    connected = []
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
      if bl.ab_connector_needed(s.shape[1:], t.shape[1:]):
        s = bl.ConvRegressor(tuple(t.shape[1:]), name=f"connector{i}")(
            s, train=train)
      connected.append(s)
    return bl.ab_loss(connected, teacher_feats)


class OverhaulDistillation(nn.Module):
  """OFD over the pre-ReLU pairs: a 1x1 conv-BN connector per pair to the
  teacher's channels, then `ofd_loss` with the teacher's margins (one
  float32 `[C_t]` array per pair, `boundary_losses.ofd_margin`)."""
  margins: tuple

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    connected = [bl.OFDConnector(t.shape[-1], name=f"connector{i}")(
        s, train=train)
                 for i, (s, t) in enumerate(zip(student_feats, teacher_feats))]
    return bl.ofd_loss(connected, teacher_feats, self.margins)


class ParaphraserTraining(nn.Module):
  """FT's pre-training stage: the paraphraser (params 'paraphraser')
  learns to reconstruct the teacher's map; the student is not read."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    (t,) = teacher_feats
    _, rec = ff.Paraphraser(t.shape[-1], self.rate, name="paraphraser")(t)
    return ff.paraphraser_loss(rec, t)


class FactorTransfer(nn.Module):
  """FT's student stage on one pair: the translator's factor of the
  student's map against the factor the paraphraser (frozen, collection
  PRETRAINED, from the pre-training stage) encodes of the teacher's."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    (s,), (t,) = student_feats, teacher_feats
    paraphraser = ff.Paraphraser(t.shape[-1], self.rate, parent=None)
    frozen = self.variable(PRETRAINED, "paraphraser", lambda: paraphraser.init(
        self.make_rng("params"), t)["params"])
    factor_t = paraphraser.apply({"params": frozen.value}, t, decode=False)
    factor_s = ff.Translator(int(t.shape[-1] * self.rate),
                             name="translator")(s, train=train)
    return ff.ft_loss(factor_s, jax.lax.stop_gradient(factor_t))


class SingularVectors(nn.Module):
  k: int = 1

  @nn.compact
  def __call__(self, student_feats, teacher_feats, batch, *, train):
    return ff.kdsvd_loss(student_feats, teacher_feats, k=self.k)


def _ofd(kd, ctx):
  if not ctx.teacher_bn or any(bn is None for bn in ctx.teacher_bn):
    raise UserError(
        "method 'ofd' takes its margins from the BatchNorm before each "
        "teacher layer's ReLU: pair pre-ReLU teacher maps ('<stage>_preact' "
        "of a CIFAR ResNet or plain CNN) in config.kd.feature_layers")
  return OverhaulDistillation(tuple(bl.ofd_margin(*bn)
                                    for bn in ctx.teacher_bn))


def _crd(kd, ctx):
  n = len(ctx.train_labels)
  return ContrastiveRepresentation(
      num_data=n, num_negatives=int(min(kd.crd_negatives, n - 1)),
      class_table=fl.crd_class_table(np.asarray(ctx.train_labels)),
      dim=int(kd.crd_dim), temperature=float(kd.crd_temperature),
      momentum=float(kd.crd_momentum))


# methods.FeatureTerm.module -> (config.kd, FeatureContext) -> module.
FEATURE_MODULES = {
    "at": lambda kd, ctx: AttentionTransfer(),
    "pkt": lambda kd, ctx: ProbabilisticTransfer(),
    "sp": lambda kd, ctx: SimilarityPreserving(),
    "rkd": lambda kd, ctx: RelationalKD(),
    "vid": lambda kd, ctx: VariationalInformation(),
    "crd": _crd,
    "reviewkd": lambda kd, ctx: KnowledgeReview(),
    "cc": lambda kd, ctx: CorrelationCongruence(int(kd.cc_dim)),
    "nst": lambda kd, ctx: NeuronSelectivity(),
    "fsp": lambda kd, ctx: FlowOfSolution(),
    "ab": lambda kd, ctx: ActivationBoundaries(),
    "ofd": _ofd,
    "ft_paraphraser": lambda kd, ctx: ParaphraserTraining(),
    "ft": lambda kd, ctx: FactorTransfer(),
    "kdsvd": lambda kd, ctx: SingularVectors(int(kd.kdsvd_k)),
}


def feature_variables(module, student_feats, teacher_feats, rng):
  """(params, other collections) of a feature term's module, initialised
  for features shaped as these (arrays or ShapeDtypeStructs, batch >= 2)."""
  b = student_feats[0].shape[0]
  zeros = lambda fs: [jnp.zeros(f.shape, jnp.float32) for f in fs]
  batch = FeatureBatch(jnp.arange(b), jnp.zeros(b, jnp.int32),
                       jax.random.PRNGKey(0))
  variables = dict(module.init(rng, zeros(student_feats),
                               zeros(teacher_feats), batch, train=False))
  return variables.pop("params", {}), variables
