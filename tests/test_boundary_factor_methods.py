"""AB, OFD, FT and KDSVD in the train step and the pipeline: the step's loss
is the logit loss + beta * the term recomputed here from the models' own
features and the losses of boundary_losses.py / factor_losses.py (tested
against NumPy in test_boundary_losses.py / test_factor_losses.py); OFD's
margins come from the teacher's BatchNorm; the pre-training stages train
their term alone and it falls; FT's student stage freezes the paraphraser
its pre-training stage wrote; bad settings are one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.distill import boundary_losses as bl
from kd_jax.distill import factor_losses as ff
from kd_jax.distill import kd_modules
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import pipeline as train
from kd_jax.train import stage
from kd_jax.train import step
from tests import helpers

MESH = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
# 16 px digits: the student's pre-ReLU maps are 8x8x16 and 4x4x16, the
# teacher's 8x8x16 and 4x4x32 (AB's second pair needs a connector).
STUDENT, TEACHER = "plain_cnn_2_c10", "plain_cnn_4_c10"
PREACT = [("stage1_preact", "stage1_preact"), ("stage2_preact", "stage2_preact")]


def _config(method, teacher=TEACHER, **overrides):
  return helpers.tiny_config(
      f"dataset=digits,method={method},student={STUDENT},image_size=16",
      scratch_baseline=False, **{"teacher.name": teacher,
                                 "learning_rate": 0.01, **overrides})


def _teacher_vars(name, ds):
  """Random teacher weights whose BatchNorms are not at their init (scale
  1, bias 0), so that OFD's margins differ per channel."""
  model = models.get_model(name, num_classes=ds.num_classes)
  variables = models.init(model, jax.random.PRNGKey(9), 16)
  rng = np.random.default_rng(0)
  bump = lambda x: x + rng.normal(0, 0.5, x.shape).astype(x.dtype)
  params = {k: jax.tree.map(bump, v) if k.startswith("bn") else v
            for k, v in variables["params"].items()}
  return model, {**variables, "params": params}


def _stage(c, method, teacher=TEACHER, role="student"):
  config_lib.validate(c)
  ds = data.load(c)
  model, t_vars = _teacher_vars(teacher, ds)
  run = stage.Stage(config_lib.read_specs(c), role=role, model_name=STUDENT,
                    method=method, stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds, mesh=MESH,
                    teacher=step.Frozen(model, t_vars),
                    select_best=role == "student")
  return ds, t_vars, run


def _steps(c, run, t_vars, n):
  """n train steps on the first batch: (initial state, [metrics])."""
  tx, state = run.init_state()
  batch = next(data.train_batches(
      run.ds.train, indexed=True, global_batch=c.batch_size, seed=0, epoch=0,
      num_steps=1, image_size=16))
  hp = step.hyperparams(config_lib.read_specs(c))
  fn = jax.jit(step.make_train_step(run.spec(), tx))
  first, out = state, []
  for _ in range(n):
    state, metrics = fn(state, batch, hp, t_vars)
    out.append(metrics)
  return first, batch, out


def _features(run, state, t_vars, batch):
  """(student logits, the student's and the teacher's features) of the
  batch, from one forward pass of each (the student in train mode)."""
  x = run.spec().preprocess(jnp.asarray(batch["image"]))
  logits, s, _ = models.apply_with_features(
      run.model, step.model_variables(state.params["student"],
                                      state.batch_stats["student"]), x,
      train=True, mutable=("batch_stats",))
  _, t, _ = models.apply_with_features(run.teacher.model, t_vars, x,
                                       train=False)
  return logits, s, t


def test_ofd_step_is_ce_plus_beta_term_with_the_teachers_margins():
  c = _config("ofd")
  _, t_vars, run = _stage(c, "ofd")
  assert [tuple(p) for p in run.feature_layers] == PREACT
  # Margins from the BatchNorm before each paired teacher ReLU.
  for margin, bn in zip(run.feature.margins, ("bn1", "bn3")):
    p = t_vars["params"][bn]
    np.testing.assert_allclose(margin, bl.ofd_margin(p["scale"], p["bias"]))
    assert len(set(np.round(margin, 5))) > 1
  state, batch, metrics = _steps(c, run, t_vars, 1)
  logits, s, t = _features(run, state, t_vars, batch)
  p, stats = state.params["feature"], state.batch_stats["feature"]
  connected = [bl.OFDConnector(t[b].shape[-1]).apply(
      {"params": p[f"connector{i}"],
       "batch_stats": stats["batch_stats"][f"connector{i}"]},
      s[a], train=True, mutable=["batch_stats"])[0]
               for i, (a, b) in enumerate(PREACT)]
  term = bl.ofd_loss(connected, [t[b] for _, b in PREACT], run.feature.margins)
  ce = losses.cross_entropy(logits, jnp.asarray(batch["label"]))
  np.testing.assert_allclose(metrics[0]["feature_loss"], term, rtol=2e-5)
  np.testing.assert_allclose(metrics[0]["loss"], ce + 1e-3 * term, rtol=2e-5)
  assert float(term) > 0


def test_ab_pretrain_stage_trains_the_ab_term_alone_and_it_falls():
  """AB's first stage (RepDistiller's `init`): the loss is the AB term of
  the pre-ReLU maps (the second pair through a conv-BN connector) at
  weight 1, no cross-entropy; the student's body learns it."""
  c = _config("ab")
  _, t_vars, run = _stage(c, methods.get("ab").pretrain.method,
                          role="pretrain")
  assert [tuple(p) for p in run.feature_layers] == PREACT
  state, batch, metrics = _steps(c, run, t_vars, 6)
  _, s, t = _features(run, state, t_vars, batch)
  p, stats = state.params["feature"], state.batch_stats["feature"]
  assert list(p) == ["connector1"]  # stage1's shapes agree: no connector
  s2, _ = bl.ConvRegressor((4, 4, 32)).apply(
      {"params": p["connector1"], "batch_stats": stats["batch_stats"][
          "connector1"]}, s["stage2_preact"], train=True,
      mutable=["batch_stats"])
  term = bl.ab_loss([s["stage1_preact"], s2],
                    [t["stage1_preact"], t["stage2_preact"]])
  np.testing.assert_allclose(metrics[0]["loss"], term, rtol=2e-5)
  np.testing.assert_allclose(metrics[0]["feature_loss"], term, rtol=2e-5)
  assert float(metrics[-1]["loss"]) < 0.9 * float(metrics[0]["loss"])


def test_ft_paraphraser_stage_is_the_reconstruction_alone_and_it_falls():
  c = _config("ft")
  _, t_vars, run = _stage(c, "ft_init", role="pretrain")
  assert [tuple(p) for p in run.feature_layers] == [("stage2", "stage2")]
  state, batch, metrics = _steps(c, run, t_vars, 6)
  _, _, t = _features(run, state, t_vars, batch)
  para = ff.Paraphraser(32)
  _, rec = para.apply({"params": state.params["feature"]["paraphraser"]},
                      t["stage2"])
  want = ff.paraphraser_loss(rec, t["stage2"])
  np.testing.assert_allclose(metrics[0]["loss"], want, rtol=2e-5)
  assert float(metrics[-1]["loss"]) < 0.9 * float(metrics[0]["loss"])


def test_kdsvd_step_is_ce_plus_beta_term():
  c = _config("kdsvd", teacher=STUDENT)
  _, t_vars, run = _stage(c, "kdsvd", teacher=STUDENT)
  pairs = [("stage1", "stage1"), ("stage2", "stage2")]
  assert [tuple(p) for p in run.feature_layers] == pairs
  state, batch, metrics = _steps(c, run, t_vars, 1)
  logits, s, t = _features(run, state, t_vars, batch)
  term = ff.kdsvd_loss([s[a] for a, _ in pairs], [t[b] for _, b in pairs])
  ce = losses.cross_entropy(logits, jnp.asarray(batch["label"]))
  np.testing.assert_allclose(metrics[0]["feature_loss"], term, rtol=1e-4)
  np.testing.assert_allclose(metrics[0]["loss"], ce + term, rtol=1e-4)
  assert float(term) > 0 and float(metrics[0]["finite"]) == 1.0


@pytest.mark.parametrize("method,teacher,overrides,message", [
    ("ofd", "cnn_mnist", {},
     "cnn_mnist has no pre-ReLU stage maps ('<stage>_preact' features"),
    ("ofd", TEACHER, {"kd.feature_layers": "stage1_preact:stage1"},
     "method 'ofd' takes its margin from the BatchNorm before the teacher "
     "layer's ReLU; plain_cnn_4_c10.stage1 has none known; allowed: "
     "stage1_preact, stage2_preact"),
    ("kdsvd", TEACHER, {},
     "method 'kdsvd' needs as many channels in the student's layer as in the "
     "teacher's; plain_cnn_2_c10.stage2 has 16, plain_cnn_4_c10.stage2 has 32"),
    ("kdsvd", STUDENT, {"kd.kdsvd_k": 0}, "config.kd.kdsvd_k=0 must be >= 1"),
    ("ft", TEACHER, {"kd.ft_init_lr": 0.0},
     "config.kd.ft_init_lr=0.0 must be > 0"),
    ("ft", TEACHER, {"kd.feature_layers": "stage1:stage1,stage2:stage2"},
     "method 'ft' takes one layer pair"),
    ("ab", TEACHER, {"kd.ab_init_epochs": 0},
     "config.kd.ab_init_epochs=0 must be >= 1 (the pre-training stage's "
     "epochs)"),
])
def test_bad_settings_are_one_line_errors(method, teacher, overrides, message):
  c = _config(method, teacher=teacher, **overrides)
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


def _run(method, tmp_path, teacher=TEACHER):
  c = _config(method, teacher=teacher)
  summary = train.train_and_evaluate(c, str(tmp_path))
  res = helpers.read_json(str(tmp_path / "student" / "results.json"))
  assert summary["rows"][-1]["stage"] == f"student ({method})"
  assert res["method"] == method and 0.0 <= res["test"]["accuracy"] <= 1.0
  return summary, res


def _latest(stage_dir):
  return checkpointing.read_packed_state(
      str(stage_dir / "checkpoints" / "latest"))[1]


@pytest.mark.slow
@pytest.mark.parametrize("method,teacher", [("ofd", TEACHER),
                                            ("kdsvd", STUDENT)])
def test_feature_term_end_to_end(method, teacher, tmp_path):
  _, res = _run(method, tmp_path, teacher)
  loss = res["final_train_metrics"]["feature_loss"]
  assert np.isfinite(loss) and loss > 0


@pytest.mark.slow
def test_ab_pretrains_the_student_then_trains_it_from_there(tmp_path):
  summary, res = _run("ab", tmp_path)
  assert [r["stage"].split(" ")[0] for r in summary["rows"]] == [
      "teacher", "pretrain", "student"]
  pre = helpers.read_json(str(tmp_path / "pretrain" / "results.json"))
  assert pre["method"] == "ab_init" and pre["epochs_run"] == 2
  assert np.isfinite(pre["final_train_metrics"]["feature_loss"])
  assert res["init_from"] == str(tmp_path / "pretrain")
  assert "feature_layers" not in res  # no AB term in the student stage


@pytest.mark.slow
def test_ft_student_stage_freezes_the_paraphraser_its_pretrain_wrote(
    tmp_path):
  summary, res = _run("ft", tmp_path)
  assert [r["stage"].split(" ")[0] for r in summary["rows"]] == [
      "teacher", "pretrain", "student"]
  assert res["feature_from"] == str(tmp_path / "pretrain")
  assert "init_from" not in res  # the student starts afresh
  loss = res["final_train_metrics"]["feature_loss"]
  assert np.isfinite(loss) and loss > 0
  written = _latest(tmp_path / "pretrain")["params"]["feature"]
  held = _latest(tmp_path / "student")["batch_stats"]["feature"][
      kd_modules.PRETRAINED]
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, x), (_, y) in zip(flat(written), flat(held), strict=True):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert "translator" in _latest(tmp_path / "student")["params"]["feature"]
