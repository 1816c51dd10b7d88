"""Small CIFAR-scale students: simple CNN, tiny CNN, MLP.

They serve CIFAR-10/100 experiments of KD with FitNets hints and teacher
assistants, which fix only their structure and size:
  * student:   a simple CNN with two convolution-max-pooling blocks and one
               dense layer, about 250-260k trainable parameters;
  * small student (multi-step KD, teacher assistants): one convolution,
               max-pooling and dense layer, about 130k parameters;
  * dense-only students: networks of dense layers only, ending in a dense
               softmax layer like the teacher (`vgg_cifar`).
The widths are chosen here. "One dense layer" is the classifier itself (the
teacher's 3 dense layers count its softmax layer too). Convs are 3x3,
stride 1, padding 1 (same size), so the student stages line up spatially with
the VGG teacher's stages (16x16 after block1, 8x8 after block2 at 32x32
input) for hint/guided-layer losses.

  simple_cnn (SimpleCNN): conv3x3(88)-ReLU-maxpool2 -> conv3x3(176)-ReLU-maxpool2
      -> flatten -> Dense(C). Widths double per block (VGG-style) with the
      base width a multiple of 8 whose count is closest to 250k. At 32x32x3,
      C=10: 2,464 + 139,568 + (8*8*176*10 + 10 = 112,650) = 254,682
      (within the 250-260k target).
  tiny_cnn (TinyCNN): conv3x3(50)-ReLU-maxpool2 -> flatten -> Dense(C). The
      width whose count is closest to the 130,000 target. At 32x32x3, C=10:
      1,400 + (16*16*50*10 + 10 = 128,010) = 129,410.
  mlp (MLP): flatten -> Dense(128)-ReLU -> Dense(C). At 32x32x3, C=10:
      393,344 + 1,290 = 394,634.

The dense layers see the flattened map, so parameter counts depend on the
input size (e.g. simple_cnn at 28x28x3: 7*7*176 inputs to the head).
Max-pools are 2x2/2 floor mode (28 -> 14 -> 7, 32 -> 16 -> 8).

Features sown into 'features':
  SimpleCNN/TinyCNN: "block1"[, "block2"] (each block's output after its
      max-pool, NHWC), "pre_logits" (the flattened / hidden vector fed to `head`).
  MLP: "hidden1".. (each hidden activation), "pre_logits" (input of `head`).
No BatchNorm or dropout: these models need no rngs or mutable collections.
"""
import flax.linen as nn

from kd_jax.models import fast_ops


class SimpleCNN(nn.Module):
  num_classes: int
  widths: tuple = (88, 176)
  dense: int = 0  # 0: the dense layer is the classifier itself

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{i + 1}")(x)
      x = nn.relu(x)
      x = fast_ops.max_pool(x, (2, 2), strides=(2, 2))
      self.sow("features", f"block{i + 1}", x)
    x = x.reshape((x.shape[0], -1))
    if self.dense:
      x = nn.relu(nn.Dense(self.dense, name="fc")(x))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


class TinyCNN(SimpleCNN):
  widths: tuple = (50,)


class MLP(nn.Module):
  """Dense-only classifier. `dropout` > 0 needs rngs={'dropout': key} in training."""
  num_classes: int
  hidden: tuple = (128,)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, name=f"fc{i + 1}")(x))
      self.sow("features", f"hidden{i + 1}", x)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


class MLP1200x2(MLP):
  """Hinton et al. (2015)'s MNIST teacher: 2 x 1200 ReLU units with dropout."""
  hidden: tuple = (1200, 1200)
  dropout: float = 0.2


class MLP800x2(MLP):
  """Hinton et al. (2015)'s MNIST student: 2 x 800 ReLU units, no dropout
  (the paper's small net, trained with and without distillation)."""
  hidden: tuple = (800, 800)


class MLP784x2(MLP):
  """The MNIST student of Shi & Chen's KD report (ECE1512 project A): two
  hidden layers as wide as the 28x28 input. At 28x28x1, C=10: 1,238,730
  parameters, as its Table 3 gives."""
  hidden: tuple = (784, 784)


class CNNMnist(nn.Module):
  """The MNIST teacher of the same report: conv3x3(32) -> maxpool 2x2/1 ->
  conv3x3(64) -> maxpool 2x2/2 -> Dense(128) -> Dense(C), valid convs, ReLU.
  Its Table 3 gives 1,011,466 parameters and 0.022 GFLOPs; this layout is the
  one with that count at 28x28x1 and C=10 (2 x 10.9M multiply-adds).

  Features: "block1", "block2" (after each max-pool), "pre_logits" (the 128
  hidden units)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i, (w, stride) in enumerate(((32, 1), (64, 2))):
      x = nn.relu(nn.Conv(w, (3, 3), padding="VALID", name=f"conv{i + 1}")(x))
      x = fast_ops.max_pool(x, (2, 2), strides=(stride, stride))
      self.sow("features", f"block{i + 1}", x)
    x = nn.relu(nn.Dense(128, name="fc")(x.reshape((x.shape[0], -1))))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


class MLPSmall(MLP):
  """A very small dense-only student: one hidden layer of 32 ReLU units."""
  hidden: tuple = (32,)
