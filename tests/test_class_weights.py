"""Class weights on the hard-label cross-entropy (config.loss.class_weights):
the weighted mean against NumPy and scikit-learn, every method's CE term
and only it, the config checks, and an imbalanced run end to end."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import log_loss
from sklearn.utils.class_weight import compute_class_weight

from kd_jax import config_lib
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import pipeline as train
from kd_jax.train import step
from tests import helpers

B, C, S, T, ALPHA = 12, 3, 2, 3.0, 0.3
RNG = np.random.default_rng(0)
Y = np.array([0, 1, 2, 0, 0, 1, 0, 2, 0, 0, 1, 0], np.int32)
W = np.array([0.5, 2.0, 4.0], np.float32)
Z_S, Z_T = RNG.normal(0, 2, (B, C)), RNG.normal(0, 2, (B, C))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _ce_B(z, y):
  return -np.log(_softmax(z)[np.arange(len(y)), y])


def _wmean(v_B, y, w):
  """PyTorch's F.cross_entropy(weight=w) mean: sum w_y v / sum w_y."""
  return v_B.mean() if w is None else np.sum(w[y] * v_B) / np.sum(w[y])


def _kl_B(zs, zt, t):
  ps, pt = _softmax(zs / t), _softmax(zt / t)
  return np.sum(pt * (np.log(pt) - np.log(ps)), -1)


def _grouped(z):
  return np.log(np.exp(z.reshape(z.shape[0], -1, S)).sum(-1))


# ------------------------------------------------------ (a) the weighted CE


def test_weighted_cross_entropy_matches_numpy_and_sklearn():
  got = float(losses.cross_entropy(jnp.asarray(Z_S, jnp.float32), Y, W))
  np.testing.assert_allclose(got, _wmean(_ce_B(Z_S, Y), Y, W), rtol=1e-5)
  sk = log_loss(Y, _softmax(Z_S), sample_weight=W[Y], labels=range(C))
  np.testing.assert_allclose(got, sk, rtol=1e-5)
  unweighted = float(losses.cross_entropy(jnp.asarray(Z_S, jnp.float32), Y))
  np.testing.assert_allclose(unweighted, log_loss(Y, _softmax(Z_S)), rtol=1e-5)


def test_balanced_weights_match_sklearn():
  y = np.array([0] * 70 + [1] * 30 + [2] * 5)
  want = compute_class_weight("balanced", classes=np.arange(3), y=y)
  np.testing.assert_allclose(losses.balanced_class_weights(y, 3), want)
  c = config_lib.base_config()
  c.loss.class_weights = "balanced"
  got = step.class_weights(config_lib.loss_spec(c), y, 3)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_config_values_and_one_line_errors():
  c = config_lib.base_config()
  assert step.class_weights(config_lib.loss_spec(c), Y, C) is None  # 'none'
  c.loss.class_weights = " 1, 2.5,4 "
  np.testing.assert_allclose(step.class_weights(config_lib.loss_spec(c), Y, C), [1, 2.5, 4])
  with pytest.raises(UserError, match=r"has 3 weights; the data has 2 classes"):
    step.class_weights(config_lib.loss_spec(c), np.array([0, 1]), 2)
  c.loss.class_weights = "balanced"
  with pytest.raises(UserError, match="class 1 has no example"):
    step.class_weights(config_lib.loss_spec(c), np.array([0, 0, 2]), 3)
  for bad in ("banana", "1,-2", "1,,2", "", "1,nan", "inverse"):
    c.loss.class_weights = bad
    with pytest.raises(UserError) as e:
      config_lib.validate(c)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value)
    assert "'balanced'" in str(e.value)


def test_stacked_hyperparams_fill_unweighted_cells_with_ones():
  c = config_lib.base_config()
  assert "class_weights" not in step.stack_hyperparams([config_lib.read_specs(k) for k in [c, c]])
  hp = step.stack_hyperparams([config_lib.read_specs(k) for k in [c, c]], [None, W])
  np.testing.assert_allclose(hp["class_weights"], [[1, 1, 1], W])


# --------------------------------------- (b) every method: the CE term only


def _inputs(name):
  """(student logits, teacher logits, temperature) as `name`'s loss takes
  them: C*S logits for subclass methods, a [K, B, C] cohort for DML, a
  per-example T for instance-wise CTKD."""
  m = methods.get(name)
  if m.subclass_logits:
    s, t = RNG.normal(0, 2, (B, C * S)), RNG.normal(0, 2, (B, C * S))
  elif m.cohort:
    s, t = RNG.normal(0, 2, (3, B, C)), None
  else:
    s, t = Z_S, Z_T
  temp = RNG.uniform(1, 5, B) if m.temperature == "instance" else T
  return s, t, temp


def _ce(s, w):
  return _wmean(_ce_B(s, Y), Y, w)


def _conditional_ce(s, t, w):
  c = (np.argmax(t, -1) == Y).astype(float)
  return _wmean((1 - c) * _ce_B(s, Y), Y, w)


# NumPy: the hard-label CE part of a method's loss, for the methods whose
# formula this file re-implements (a feature method's logit part is
# kd.feature_logit_method's: 'none', plain CE).
CE_PARTS = {
    "none": lambda s, t, w: _ce(s, w),
    "dkd": lambda s, t, w: _ce(s, w),
    "dist": lambda s, t, w: _ce(s, w),
    "vanilla": lambda s, t, w: (1 - ALPHA) * _ce(s, w),
    "ctkd": lambda s, t, w: (1 - ALPHA) * _ce(s, w),
    "ctkd_instance": lambda s, t, w: (1 - ALPHA) * _ce(s, w),
    "fitnets": lambda s, t, w: (1 - ALPHA) * _ce(s, w),
    "conditional": _conditional_ce,
    "subclass_teacher": lambda s, t, w: _ce(_grouped(s), w),
    "subclass": lambda s, t, w: (1 - ALPHA) * _ce(_grouped(s), w),
    "dml": lambda s, t, w: sum(_ce(z, w) for z in s),
}


def _ce_part(name):
  if not methods.get(name).class_weights:  # no CE (a pre-training stage)
    return None
  if methods.get(name).feature is not None:
    return CE_PARTS["none"]
  return CE_PARTS.get(name)


def _loss(name, s, t, temp, w):
  f = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
  return float(methods.get(name).loss(
      methods.KDSpec(), f(s), f(t), jnp.asarray(Y), temperature=f(temp),
      alpha=jnp.float32(ALPHA), epoch=jnp.int32(0), class_weights=f(w)))


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_weights_change_only_the_cross_entropy_term(name):
  """Every registry entry: weights of one change nothing, and the weights
  reach the loss exactly where the entry says they apply; where this file
  has the method's CE formula, the change equals NumPy's."""
  s, t, temp = _inputs(name)
  plain = _loss(name, s, t, temp, None)
  np.testing.assert_allclose(_loss(name, s, t, temp, np.ones(C)), plain,
                             rtol=1e-6, atol=1e-6)
  weighted = _loss(name, s, t, temp, W)
  assert (abs(weighted - plain) > 1e-3) == methods.get(name).class_weights
  ce = _ce_part(name)
  if ce is not None:
    np.testing.assert_allclose(weighted - plain, ce(s, t, W) - ce(s, t, None),
                               rtol=1e-4, atol=1e-5)


def test_vanilla_kd_against_numpy():
  got = _loss("vanilla", Z_S, Z_T, T, W)
  want = (ALPHA * T**2 * _kl_B(Z_S, Z_T, T).mean()
          + (1 - ALPHA) * _wmean(_ce_B(Z_S, Y), Y, W))
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ------------------------------------------- (c) an imbalanced run, end to end


def _write_imbalanced_folder(root, seed=0):
  """Two classes, 270/30 in train: the minority is brighter by about one
  standard deviation of a per-image brightness noise, so it is learnable
  but a short unweighted run predicts the majority class."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  counts = {"train": (270, 30), "val": (40, 40), "test": (60, 60)}
  for split, per_class in counts.items():
    for ci, (cls, n) in enumerate(zip(("a_major", "b_minor"), per_class)):
      d = os.path.join(root, split, cls)
      os.makedirs(d)
      for i in range(n):
        img = 110 + 28 * ci + rng.normal(0, 25) + rng.normal(0, 10, (16, 16, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(d, f"{i}.png"))
  return root


def _minority_recall(root, workdir, weights):
  c = config_lib.base_config()
  c.runlocal = True  # allows 16 px images
  c.dataset.name, c.dataset.data_dir, c.dataset.image_size = "folder", root, 16
  c.kd.method, c.student.name = "none", "mlp"
  c.batch_size, c.eval_batch_size, c.num_epochs = 32, 64, 2
  c.learning_rate, c.early_stopping_patience = 1e-3, 0
  c.log_every_steps, c.checkpoint_every_steps = 100, 0
  c.loss.class_weights = weights
  train.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "student", "results.json")) as f:
    cm = np.asarray(json.load(f)["test"]["confusion"], float)  # [true, pred]
  return cm[1, 1] / cm[1].sum(), cm[0, 0] / cm[0].sum()


def test_balanced_weights_recover_the_minority_class(tmp_path, capsys):
  root = _write_imbalanced_folder(str(tmp_path / "data"))
  plain_min, plain_maj = _minority_recall(root, str(tmp_path / "plain"), "none")
  bal_min, bal_maj = _minority_recall(root, str(tmp_path / "bal"), "balanced")
  assert plain_min <= 0.35 and plain_maj >= 0.9, (plain_min, plain_maj)
  assert bal_min > plain_min + 0.25, (bal_min, plain_min)
  assert bal_maj >= 0.6, bal_maj  # not simply the minority for everything
  log = capsys.readouterr()
  assert ("cross-entropy class weights (balanced): a_major=0.5556, b_minor=5"
          in log.out + log.err)


def test_wrong_number_of_weights_fails_at_stage_start(tmp_path):
  root = str(tmp_path / "data")
  helpers.write_image_folder(root, classes=("x", "y"), per_split={
      "train": 4, "val": 2, "test": 2}, size=8)
  c = config_lib.base_config()
  c.runlocal = True
  c.dataset.name, c.dataset.data_dir, c.dataset.image_size = "folder", root, 8
  c.kd.method, c.student.name, c.batch_size = "none", "mlp", 4
  c.loss.class_weights = "1,2,3"
  with pytest.raises(UserError, match=r"^config.loss.class_weights='1,2,3' "
                     r"has 3 weights; the data has 2 classes") as e:
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "w" / "student" / "checkpoints")
