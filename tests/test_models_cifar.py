"""The CIFAR benchmark zoo (cifar_resnet, wrn, cifar_vgg, cifar_mobile,
plain_cnn) and torchvision's resnet34: parameter counts, sown feature shapes
(jax.eval_shape only), and a real forward of a few small models."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from tests import model_helpers

# RepDistiller's (CRD, Tian et al. 2020) models/*.py at 100 classes, 32 px.
REPDISTILLER_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324,
    "resnet32": 472_756, "resnet44": 667_188, "resnet56": 861_620,
    "resnet110": 1_736_564, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8_cifar": 3_965_028, "vgg11_cifar": 9_277_284,
    "vgg13_cifar": 9_462_180, "vgg16_cifar": 14_774_436,
    "vgg19_cifar": 20_086_692,
    "mobilenet_v2_cifar": 812_836, "shufflenet_v1_cifar": 949_258,
    "shufflenet_v2_cifar": 1_355_528,
}
# TAKD's ConvNetMaker (plain_cnn_cifar.py) at 32 px: its CIFAR-100 book at
# 100 classes, its CIFAR-10 book at 10.
TAKD_PARAMS = {
    ("plain_cnn_2", 100): 215_172, ("plain_cnn_4", 100): 475_652,
    ("plain_cnn_6", 100): 1_107_204, ("plain_cnn_8", 100): 1_246_276,
    ("plain_cnn_10", 100): 2_931_460,
    ("plain_cnn_2_c10", 10): 13_082, ("plain_cnn_4_c10", 10): 37_338,
    ("plain_cnn_6_c10", 10): 82_778, ("plain_cnn_8_c10", 10): 327_962,
    ("plain_cnn_10_c10", 10): 2_487_850,
}
FAMILIES = ("cifar_resnet", "wrn", "cifar_vgg", "cifar_mobile", "plain_cnn")


@pytest.mark.parametrize("name", sorted(REPDISTILLER_PARAMS))
def test_param_count_matches_repdistiller(name):
  assert models.count_params(name, 100, 32) == REPDISTILLER_PARAMS[name]


@pytest.mark.parametrize("name,classes", sorted(TAKD_PARAMS))
def test_param_count_matches_takd(name, classes):
  assert models.count_params(name, classes, 32) == TAKD_PARAMS[name, classes]


def test_resnet34_count():
  assert models.count_params("resnet34", 1000, 224) == 21_797_672  # torchvision


def test_families_registered_without_clashes():
  seen = {}
  for fam in FAMILIES + ("vgg", "resnet", "mobilenet", "shufflenet"):
    for name in importlib.import_module(f"kd_jax.models.{fam}").MODELS:
      assert name not in seen, f"{name} in {fam} and {seen.get(name)}"
      seen[name] = fam
  for fam in FAMILIES:
    for name in importlib.import_module(f"kd_jax.models.{fam}").MODELS:
      assert name in models.MODELS
  # the ImageNet / dense-head VGGs keep their names
  assert {"vgg16", "vgg16_bn", "vgg_cifar"} <= set(models.MODELS)


def _spatial(feats):
  return {k: v[1:] for k, v in feats.items()}


def preact(*shapes):
  """The stage maps before their last ReLU (RepDistiller's preact=True)."""
  return {f"stage{i + 1}_preact": s for i, s in enumerate(shapes)}


# name -> {feature: (H, W, C)} at 32 px (RepDistiller's is_feat shapes).
FEATURES_32 = {
    "resnet20": {"stem": (32, 32, 16), "stage1": (32, 32, 16),
                 "stage2": (16, 16, 32), "stage3": (8, 8, 64),
                 "pre_logits": (64,), **preact(
                     (32, 32, 16), (16, 16, 32), (8, 8, 64))},
    "resnet32x4": {"stem": (32, 32, 32), "stage1": (32, 32, 64),
                   "stage2": (16, 16, 128), "stage3": (8, 8, 256),
                   "pre_logits": (256,), **preact(
                       (32, 32, 64), (16, 16, 128), (8, 8, 256))},
    "wrn_40_2": {"stem": (32, 32, 16), "stage1": (32, 32, 32),
                 "stage2": (16, 16, 64), "stage3": (8, 8, 128),
                 "pre_logits": (128,)},
    "vgg13_cifar": {"stem": (32, 32, 64), "stage1": (16, 16, 128),
                    "stage2": (8, 8, 256), "stage3": (4, 4, 512),
                    "stage4": (4, 4, 512), "pre_logits": (512,)},
    "mobilenet_v2_cifar": {"stem": (16, 16, 16), "stage1": (16, 16, 12),
                           "stage2": (8, 8, 16), "stage3": (4, 4, 48),
                           "stage4": (2, 2, 160), "pre_logits": (1280,)},
    "shufflenet_v1_cifar": {"stem": (32, 32, 24), "stage1": (16, 16, 240),
                            "stage2": (8, 8, 480), "stage3": (4, 4, 960),
                            "pre_logits": (960,)},
    "shufflenet_v2_cifar": {"stem": (32, 32, 24), "stage1": (16, 16, 116),
                            "stage2": (8, 8, 232), "stage3": (4, 4, 464),
                            "pre_logits": (1024,)},
    "plain_cnn_6": {"stage1": (16, 16, 32), "stage2": (8, 8, 64),
                    "stage3": (8, 8, 128), "pre_logits": (8 * 8 * 128,),
                    **preact((16, 16, 32), (8, 8, 64), (8, 8, 128))},
    "plain_cnn_10": {"stage1": (16, 16, 32), "stage2": (8, 8, 64),
                     "stage3": (4, 4, 128), "stage4": (2, 2, 256),
                     "pre_logits": (512,), **preact(
                         (16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 256))},
}


@pytest.mark.parametrize("name", sorted(FEATURES_32))
def test_feature_shapes_32(name):
  assert _spatial(models.feature_shapes(name, 100, 32)) == FEATURES_32[name]


def test_vgg_cifar_block4_pool_at_64_px():
  """RepDistiller pools before block 4 only at 64 px: block 4 stays 4x4."""
  feats = _spatial(models.feature_shapes("vgg8_cifar", 10, 64))
  assert feats["stage3"] == (8, 8, 512) and feats["stage4"] == (4, 4, 512)


@pytest.mark.parametrize("size,stride32", [(224, 7), (32, 1)])
def test_resnet34_feature_shapes(size, stride32):
  feats = _spatial(models.feature_shapes("resnet34", 1000, size))
  assert feats["layer4"] == (stride32, stride32, 512)
  assert feats["stem"] == (size // 2, size // 2, 64)
  assert feats["pre_logits"] == (512,)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "plain_cnn_4"])
def test_real_forward_train_and_eval(name):
  model = models.get_model(name, num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                  jnp.float32)
  variables = model_helpers.fake_variables(model, x[:1])

  @jax.jit
  def both(v, x):
    logits, feats, _ = models.apply_with_features(model, v, x, train=False)
    train_logits, _, new = models.apply_with_features(
        model, v, x, train=True, mutable=["batch_stats"])
    return logits, train_logits, feats, new

  logits, train_logits, feats, new = both(variables, x)
  assert logits.shape == train_logits.shape == (2, 10)
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(train_logits))
  want = {k: (2, *v[1:]) for k, v in models.feature_shapes(name, 10, 32).items()}
  assert {k: v.shape for k, v in feats.items()} == want
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                         variables["batch_stats"], new["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_resnet34_imports_torchvision_weights(tmp_path):
  """The generic torch import maps torchvision's resnet34 layer for layer."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from kd_jax.models.interop import convert
  torch.manual_seed(0)
  net = torchvision.models.resnet34(weights=None)
  assert sum(p.numel() for p in net.parameters()) == \
      models.count_params("resnet34", 1000, 224)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
  net.eval()
  path = str(tmp_path / "resnet34.pth")
  torch.save(net.state_dict(), path)
  variables = convert.import_weights("resnet34", path, num_classes=1000)
  x = np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  model = models.get_model("resnet34", num_classes=1000)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
