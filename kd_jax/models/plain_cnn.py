"""Plain CNNs of TAKD (Mirzadeh et al. 2020, "Improved Knowledge Distillation
via Teacher Assistant"), for CIFAR.

The layer lists of the paper's code (imirzadeh/Teacher-Assistant-Knowledge-
Distillation, `plain_cnn_cifar.py`): "C" = conv3x3 (pad 1, with bias) -> BN
-> ReLU of that width, "M" = max-pool 2x2/2, "F" = Dense -> ReLU of that width,
then the classifier Dense(C). `plain_cnn_N` is the CIFAR-100 book (the
paper's CIFAR-100 models), `plain_cnn_N_c10` its CIFAR-10 book (narrower
widths); the class count never changes the layout.

  N    CIFAR-100 book (plain_cnn_N)           CIFAR-10 book (plain_cnn_N_c10)
  2    C32 M C32 M                            C16 M C16 M
  4    C32 C32 M C64 C64 M                    C16 C16 M C32 C32 M
  6    C32 C32 M C64 C64 M C128 C128          C16 C16 M C32 C32 M C64 C64 M
  8    C32 C32 M C64 C64 M C128 C128 M        C16 C16 M C32 C32 M C64 C64 M
       C256 C256 M F64                        C128 C128 M F64
  10   C32 C32 M C64 C64 M C128 C128 M        C32 C32 M C64 C64 M C128 C128 M
       C256 C256 C256 C256 M F512             C256 C256 C256 C256 M F128
Trainable params at 32 px (= TAKD's models): at C=100 plain_cnn_2 215,172;
plain_cnn_4 475,652; plain_cnn_6 1,107,204; plain_cnn_8 1,246,276;
plain_cnn_10 2,931,460; at C=10 plain_cnn_2_c10 13,082; plain_cnn_4_c10
37,338; plain_cnn_6_c10 82,778; plain_cnn_8_c10 327,962; plain_cnn_10_c10
2,487,850. The flattened map feeds the first Dense, so counts depend on the
input size (TAKD fixes 32 px).

The map is flattened channels-first (torch's `view` on NCHW), so a torch
Linear's weight ports as its transpose. Init: PyTorch's defaults (TAKD sets
none); BN scale 1 / bias 0.

Features sown into 'features' (submodules are conv{i}, bn{i}, fc{i}, head):
  "stage1", "stage2", ..: each run of convs ended by a max-pool, after the
      pool; a last run without a pool (plain_cnn_6) after its last ReLU.
      CIFAR-100 book at 32 px: stage1 16x16x32, stage2 8x8x64, stage3
      4x4x128 (plain_cnn_6: 8x8x128), stage4 2x2x256, as many as the model
      has runs.
  "stage1_preact", ..: the same before the ReLU (the pooled output of the
      stage's last BN; `preact_bn` names that BN, for OFD's margin).
  "pre_logits": the input of the classifier `head`: the last hidden Dense
      after its ReLU (plain_cnn_8 / 10), else the flattened map.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import fast_ops
from kd_jax.models.layers import (batch_norm, torch_bias_init,
                                  torch_kernel_init)

M = "M"
BOOK_C100 = {
    2: (32, M, 32, M),
    4: (32, 32, M, 64, 64, M),
    6: (32, 32, M, 64, 64, M, 128, 128),
    8: (32, 32, M, 64, 64, M, 128, 128, M, 256, 256, M),
    10: (32, 32, M, 64, 64, M, 128, 128, M, 256, 256, 256, 256, M),
}
BOOK_C10 = {
    2: (16, M, 16, M),
    4: (16, 16, M, 32, 32, M),
    6: (16, 16, M, 32, 32, M, 64, 64, M),
    8: (16, 16, M, 32, 32, M, 64, 64, M, 128, 128, M),
    10: (32, 32, M, 64, 64, M, 128, 128, M, 256, 256, 256, 256, M),
}
HIDDEN_C100 = {8: (64,), 10: (512,)}
HIDDEN_C10 = {8: (64,), 10: (128,)}


def _dense(features, fan_in, name):
  return nn.Dense(features, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=name)


class PlainCNN(nn.Module):
  """A TAKD plain CNN: `convs` widths and "M" pools, `hidden` Dense widths."""
  num_classes: int
  convs: tuple = BOOK_C100[2]
  hidden: tuple = ()

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    stage, i, pre = 1, 0, None
    for v in self.convs:
      if v == M:
        x = fast_ops.max_pool(x, (2, 2), strides=(2, 2))
        # max-pool commutes with ReLU: the pooled BN output is the stage
        # output before its ReLU.
        self.sow("features", f"stage{stage}_preact",
                 fast_ops.max_pool(pre, (2, 2), strides=(2, 2)))
        self.sow("features", f"stage{stage}", x)
        stage += 1
        continue
      fan_in = 9 * x.shape[-1]
      x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)),
                  kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=f"conv{i}")(x)
      pre = batch_norm(train, f"bn{i}")(x)
      x = nn.relu(pre)
      i += 1
    if self.convs[-1] != M:
      self.sow("features", f"stage{stage}_preact", pre)
      self.sow("features", f"stage{stage}", x)
    # Channels-first flatten, as torch's view on NCHW.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
    for j, h in enumerate(self.hidden):
      x = nn.relu(_dense(h, x.shape[-1], f"fc{j}")(x))
    self.sow("features", "pre_logits", x)
    return _dense(self.num_classes, x.shape[-1], "head")(x)

  def preact_bn(self) -> dict:
    """{pre-ReLU feature: params path of the BatchNorm before its ReLU}:
    each stage's last conv's BN (for OFD's margin)."""
    out, stage, i = {}, 1, 0
    for v in self.convs:
      if v == M:
        out[f"stage{stage}_preact"] = (f"bn{i - 1}",)
        stage += 1
      else:
        i += 1
    if self.convs[-1] != M:
      out[f"stage{stage}_preact"] = (f"bn{i - 1}",)
    return out


MODELS = {
    **{f"plain_cnn_{n}": functools.partial(
        PlainCNN, convs=BOOK_C100[n], hidden=HIDDEN_C100.get(n, ()))
       for n in BOOK_C100},
    **{f"plain_cnn_{n}_c10": functools.partial(
        PlainCNN, convs=BOOK_C10[n], hidden=HIDDEN_C10.get(n, ()))
       for n in BOOK_C10},
}
