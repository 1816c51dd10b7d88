"""A real jitted forward of every registered model at 32x32 (eval and train)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import profile

# Slow: the big compiles, and models whose own test file already runs a real
# jitted forward (run them all with `pytest -m slow`).
BIG = ("vgg16", "vgg16_bn", "resnet50", "mobilenet_v3_large", "ghostnet_100",
       "mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18", "resnet34")
# The CIFAR benchmark zoo: one small member per family in the default run
# (each family's blocks are shared by its deeper members), the rest slow.
CIFAR_DEFAULT = {"resnet8", "wrn_16_1", "vgg8_cifar", "plain_cnn_2",
                 "shufflenet_v1_cifar"}
BIG += tuple(n for n in models.MODELS
             if (n.startswith(("resnet", "wrn_", "plain_cnn_"))
                 or n.endswith("_cifar"))
             and n not in CIFAR_DEFAULT and n != "vgg_cifar")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in BIG else n
    for n in sorted(models.MODELS)])
def test_jitted_forward_32(name):
  model = models.get_model(name, num_classes=10)
  variables = profile.random_variables(name, 10, 32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)

  @jax.jit
  def both(v, x):
    eval_logits, feats, _ = models.apply_with_features(model, v, x, train=False)
    train_logits, _, new = models.apply_with_features(
        model, v, x, train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.PRNGKey(0)})
    return eval_logits, train_logits, feats, new

  eval_logits, train_logits, feats, new = both(variables, x)
  assert eval_logits.shape == train_logits.shape == (2, 10)
  assert np.all(np.isfinite(eval_logits)) and np.all(np.isfinite(train_logits))
  assert "pre_logits" in feats and feats["pre_logits"].shape[0] == 2
  if "batch_stats" in variables:  # training updates the running statistics
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           variables["batch_stats"], new["batch_stats"])
    assert any(jax.tree.leaves(changed))
