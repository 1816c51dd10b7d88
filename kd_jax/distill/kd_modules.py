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
    CRD's embedding heads, ReviewKD's fusion) train with the student; their
    other collections (ReviewKD's 'batch_stats', CRD's 'memory' banks) are
    the step's to update and live in the train state, so a resumed run
    continues them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.distill import feature_losses as fl


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


def _crd(kd, train_labels):
  n = len(train_labels)
  return ContrastiveRepresentation(
      num_data=n, num_negatives=int(min(kd.crd_negatives, n - 1)),
      class_table=fl.crd_class_table(np.asarray(train_labels)),
      dim=int(kd.crd_dim), temperature=float(kd.crd_temperature),
      momentum=float(kd.crd_momentum))


# methods.FeatureTerm.module -> (config.kd, training labels) -> module.
FEATURE_MODULES = {
    "at": lambda kd, labels: AttentionTransfer(),
    "pkt": lambda kd, labels: ProbabilisticTransfer(),
    "sp": lambda kd, labels: SimilarityPreserving(),
    "rkd": lambda kd, labels: RelationalKD(),
    "vid": lambda kd, labels: VariationalInformation(),
    "crd": _crd,
    "reviewkd": lambda kd, labels: KnowledgeReview(),
    "cc": lambda kd, labels: CorrelationCongruence(int(kd.cc_dim)),
    "nst": lambda kd, labels: NeuronSelectivity(),
    "fsp": lambda kd, labels: FlowOfSolution(),
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
