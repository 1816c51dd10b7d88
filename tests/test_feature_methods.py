"""Feature and relation methods in the train step: the step's loss equals
the logit method's loss + beta * the feature term recomputed here from the
models' own features (feature_losses.py, tested against NumPy in
test_feature_losses.py), CRD's memory banks are updated and checkpointed
(a stopped run resumes bit for bit), and bad settings are one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.distill import feature_losses as fl
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import pipeline as train
from kd_jax.train import preemption
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import sweep
from tests import helpers

MESH = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
# A BatchNorm student and a teacher with other sizes: 16 px digits give
# student maps 8x8x16, 4x4x16 and teacher maps 13x13x32, 5x5x64.
STUDENT, TEACHER = "plain_cnn_2_c10", "cnn_mnist"
BETA = {"at": 1000.0, "pkt": 30000.0, "sp": 3000.0, "rkd": 1.0, "vid": 1.0,
        "crd": 0.8, "reviewkd": 1.0, "cc": 0.02, "nst": 50.0}
# beta's warm-up factor at epoch 0: ReviewKD ramps up over 20 epochs.
WARM0 = {"reviewkd": 1.0 / 20}
STAGES = [("stage1", "block1"), ("stage2", "block2")]
POOLED = [("pre_logits", "pre_logits")]
DEFAULT_PAIRS = {"at": STAGES, "vid": STAGES, "sp": STAGES[-1:],
                 "pkt": POOLED, "rkd": POOLED, "crd": POOLED,
                 "reviewkd": STAGES + POOLED, "cc": POOLED, "nst": STAGES}


def _config(method, **overrides):
  return helpers.tiny_config(
      f"dataset=digits,method={method},student={STUDENT},image_size=16",
      scratch_baseline=False, **{"teacher.name": TEACHER, **overrides})


def _stage(c, stage_dir="/nonexistent", teacher_vars=None):
  ds = data.load(c)
  teacher = models.get_model(TEACHER, num_classes=ds.num_classes)
  t_vars = teacher_vars or models.init(teacher, jax.random.PRNGKey(9), 16)
  return ds, t_vars, stage.Stage(config_lib.read_specs(c), role="student", model_name=STUDENT, method=c.kd.method,
      stage_dir=stage_dir, num_epochs=2, learning_rate=c.learning_rate, ds=ds,
      mesh=MESH, teacher=step.Frozen(teacher, t_vars))


def _first_batch(c, ds):
  return next(data.train_batches(
      ds.train, indexed=True, global_batch=c.batch_size, seed=0, epoch=0,
      num_steps=1, image_size=16))


def _reference_term(method, run, state, s, t, batch, key):
  """The unweighted feature term from feature_losses' functions and the
  state's parameters, and (CRD) the banks after the step."""
  p, pairs = state.params.get("feature", {}), run.feature_layers
  sl, tl = [s[a] for a, _ in pairs], [t[b] for _, b in pairs]
  if method in ("at", "sp", "nst"):
    return getattr(fl, f"{method}_loss")(sl, tl), None
  if method == "cc":
    embed = lambda name, f: fl.LinearEmbed(128).apply({"params": p[name]}, f)
    return fl.cc_loss(embed("student_embed", sl[0]),
                      embed("teacher_embed", tl[0])), None
  if method in ("pkt", "rkd"):
    return getattr(fl, f"{method}_loss")(sl[0].reshape(len(sl[0]), -1),
                                         tl[0]), None
  if method == "vid":
    total = 0.0
    for i, (a, b) in enumerate(zip(sl, tl)):
      a, b = fl.pool_to_match(a, b)
      mean, raw = fl.VIDRegressor(b.shape[-1], b.shape[-1]).apply(
          {"params": p[f"regressor{i}"]}, a)
      total += fl.vid_loss(mean, b, raw)
    return total, None
  if method == "crd":
    embed = lambda name, f: fl.CRDEmbed(128).apply({"params": p[name]}, f)
    n = len(run.ds.train)
    neg = fl.crd_sample_other_class_negatives(
        key, batch["label"], fl.crd_class_table(run.ds.train.labels),
        num_negatives=n - 1)
    return fl.crd_loss(embed("student_embed", sl[0]),
                       embed("teacher_embed", tl[0]), batch["index"], neg,
                       state.batch_stats["feature"]["memory"]["banks"])
  as_map = lambda f: f if f.ndim == 4 else f[:, None, None, :]
  sl, tl = [as_map(f) for f in sl], [as_map(f) for f in tl]
  fusion = fl.ReviewKDFusion(256, [f.shape[-1] for f in tl],
                             [f.shape[1:3] for f in tl])
  outs, _ = fusion.apply({"params": p["fusion"],
                          **state.batch_stats["feature"]}, sl, train=True,
                         mutable=["batch_stats"])
  return fl.hcl_loss(outs, tl), None


def _step_and_reference(method, **overrides):
  c = _config(method, **overrides)
  ds, t_vars, run = _stage(c)
  tx, state = run.init_state()
  batch = _first_batch(c, ds)
  hp = step.hyperparams(config_lib.read_specs(c))
  new, metrics = jax.jit(step.make_train_step(run.spec(), tx))(
      state, batch, hp, t_vars)
  # The reference: the models' features from one forward pass each.
  x = run.spec().preprocess(jnp.asarray(batch["image"]))
  s_logits, s, _ = models.apply_with_features(
      run.model, step.model_variables(state.params["student"],
                                      state.batch_stats["student"]), x,
      train=True, mutable=("batch_stats",))
  t_logits, t, _ = models.apply_with_features(run.teacher.model, t_vars, x,
                                              train=False)
  key = jax.random.fold_in(step.step_rngs(c.seed, 0)[1], 1)
  term, banks = _reference_term(method, run, state, s, t, batch, key)
  return c, run, state, new, metrics, (s_logits, t_logits, term, banks), batch


# CRD (memory banks, indices) and VID (trained regressors) run by default;
# the stateless terms and ReviewKD (a heavy compile) are in the slow suite.
@pytest.mark.parametrize("method", [
    m if m in ("crd", "vid") else pytest.param(m, marks=pytest.mark.slow)
    for m in sorted(BETA)])
def test_step_loss_is_cross_entropy_plus_beta_feature_term(method):
  c, run, state, new, metrics, ref, batch = _step_and_reference(method)
  s_logits, _, term, banks = ref
  assert [tuple(p) for p in run.feature_layers] == DEFAULT_PAIRS[method]
  ce = losses.cross_entropy(s_logits, jnp.asarray(batch["label"]))
  np.testing.assert_allclose(metrics["feature_loss"], term, rtol=2e-5,
                             atol=1e-7)
  np.testing.assert_allclose(
      metrics["loss"], ce + BETA[method] * WARM0.get(method, 1.0) * term,
      rtol=2e-5, atol=1e-6)
  assert float(metrics["finite"]) == 1.0
  if method != "crd":
    return
  # CRD: the banks' batch rows moved as the reference's, the others stayed;
  # the normalisation constants are estimated on this first batch.
  got = new.batch_stats["feature"]["memory"]["banks"]
  old = state.batch_stats["feature"]["memory"]["banks"]
  for g, want, o in zip(got, banks, old):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
  rows = np.zeros(len(run.ds.train), bool)
  rows[batch["index"]] = True
  np.testing.assert_array_equal(got.student_bank_NxD[~rows],
                                old.student_bank_NxD[~rows])
  assert not np.allclose(got.teacher_bank_NxD[rows], old.teacher_bank_NxD[rows])
  assert float(old.z_student) < 0 < float(got.z_student)


@pytest.mark.parametrize("warmup", [20, 5, 0])
def test_reviewkd_beta_warms_up_linearly(warmup):
  """beta * min(1, (E + 1) / warmup) at the 0-based epoch E: mdistiller's
  min(E / warmup, 1) with its 1-based epochs; 0 is no warm-up. Traced
  epochs (the step's) give the same."""
  c = _config("reviewkd", **{"kd.reviewkd_warmup_epochs": warmup,
                             "kd.feature_weight": 2.0})
  config_lib.validate(c)
  kd, method = config_lib.read_specs(c).kd, methods.get("reviewkd")
  epochs = np.arange(30)
  want = 2.0 * (np.minimum(1.0, (epochs + 1) / warmup) if warmup else 1.0)
  got = [methods.feature_weight(kd, method, epoch=e) for e in epochs]
  traced = jax.jit(jax.vmap(lambda e: methods.feature_weight(
      kd, method, epoch=e)))(jnp.asarray(epochs))
  np.testing.assert_allclose(np.broadcast_to(got, (30,)), want, rtol=1e-6)
  np.testing.assert_allclose(np.broadcast_to(traced, (30,)), want, rtol=1e-6)
  assert methods.feature_weight(kd, method) == 2.0  # beta, as logged
  assert config_lib.base_config().kd.reviewkd_warmup_epochs == 20
  # Only ReviewKD's term warms up.
  at = methods.get("at")
  assert methods.feature_weight(kd, at, epoch=jnp.int32(0)) == 2.0


def test_a_logit_method_and_beta_combine_with_the_feature_term():
  c, _, _, _, metrics, ref, batch = _step_and_reference(
      "sp", **{"kd.feature_logit_method": "vanilla", "kd.feature_weight": 7.0,
               "kd.temperature": 3.0, "kd.alpha": 0.7})
  s_logits, t_logits, term, _ = ref
  kd = losses.kd_loss(s_logits, t_logits, jnp.asarray(batch["label"]),
                      temperature=3.0, alpha=0.7)
  np.testing.assert_allclose(metrics["loss"], kd + 7.0 * term, rtol=2e-5)
  assert float(metrics["feature_loss"]) > 0


def test_crd_run_stops_and_resumes_bit_for_bit(tmp_path, monkeypatch):
  """Stopped mid-epoch and at an epoch end, the resumed CRD run ends with
  the uninterrupted run's state: parameters, optimizer and memory banks."""
  compiled = {}  # the runs share one config: compile their steps once
  step_fns = stage.Stage.step_fns
  monkeypatch.setattr(stage.Stage, "step_fns", lambda self, spec, repl: (
      compiled.setdefault("fns", step_fns(self, spec, repl))))
  c = _config("crd")
  t_vars = _stage(c)[1]
  ref = _stage(c, str(tmp_path / "ref"), t_vars)[2]
  ref_res = ref.run()
  for stop_at in (3, ref.spe):
    monkeypatch.setattr(preemption, "requested",
                        lambda step, every, at=stop_at: step == at)
    with pytest.raises(preemption.Preempted):
      _stage(c, str(tmp_path / "cut"), t_vars)[2].run()
  monkeypatch.setattr(preemption, "requested", lambda step, every: False)
  res = _stage(c, str(tmp_path / "cut"), t_vars)[2].run()
  assert res["steps"] == ref_res["steps"] == 2 * ref.spe
  assert res["feature_layers"] == [["pre_logits", "pre_logits"]]
  assert res["feature_weight"] == 0.8
  latest = lambda d: checkpointing.read_packed_state(
      str(tmp_path / d / "checkpoints" / "latest"))[1]
  a, b = latest("ref"), latest("cut")
  banks = a["batch_stats"]["feature"]["memory"]["banks"]
  assert banks["student_bank_NxD"].shape == (len(ref.ds.train), 128)
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, x), (_, y) in zip(flat(a), flat(b), strict=True):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  # The exported model is the student alone.
  best = helpers.restore_raw(str(tmp_path / "ref" / "checkpoints" / "best"),
                             "model")[1]
  like = models.init_shapes(STUDENT, 10, 16)
  assert jax.tree.structure(best) == jax.tree.structure(like)


def test_fsp_pretrain_stage_loss_is_the_fsp_term_alone():
  """FSP's first stage (RepDistiller's `init`): the loss is the FSP term of
  the paired layers at weight 1, no cross-entropy."""
  c = _config("fsp", **{"teacher.name": STUDENT})
  config_lib.validate(c)
  ds = data.load(c)
  teacher = models.get_model(STUDENT, num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), 16)
  run = stage.Stage(config_lib.read_specs(c), role="pretrain",
                    model_name=STUDENT,
                    method=methods.get("fsp").pretrain.method,
                    stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds, mesh=MESH,
                    teacher=step.Frozen(teacher, t_vars), select_best=False)
  assert [tuple(p) for p in run.feature_layers] == [("stage1", "stage1"),
                                                    ("stage2", "stage2")]
  tx, state = run.init_state()
  batch = _first_batch(c, ds)
  _, metrics = jax.jit(step.make_train_step(run.spec(), tx))(
      state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
  x = run.spec().preprocess(jnp.asarray(batch["image"]))
  _, s, _ = models.apply_with_features(
      run.model, step.model_variables(state.params["student"],
                                      state.batch_stats["student"]), x,
      train=True, mutable=("batch_stats",))
  _, t, _ = models.apply_with_features(teacher, t_vars, x, train=False)
  term = fl.fsp_loss([s["stage1"], s["stage2"]], [t["stage1"], t["stage2"]])
  np.testing.assert_allclose(metrics["feature_loss"], term, rtol=2e-5)
  np.testing.assert_allclose(metrics["loss"], term, rtol=2e-5)


@pytest.mark.slow
def test_fsp_runs_its_pretrain_stage_then_the_student_from_it(tmp_path):
  c = _config("fsp", **{"teacher.name": STUDENT})
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert [r["stage"].split(" ")[0] for r in summary["rows"]] == [
      "teacher", "pretrain", "student"]
  pre = helpers.read_json(str(tmp_path / "pretrain" / "results.json"))
  res = helpers.read_json(str(tmp_path / "student" / "results.json"))
  assert pre["method"] == methods.get("fsp").pretrain.method
  assert pre["epochs_run"] == 2 and np.isfinite(
      pre["final_train_metrics"]["feature_loss"])
  assert res["method"] == "fsp" and "feature_layers" not in res
  assert res["init_from"] == str(tmp_path / "pretrain")


@pytest.mark.parametrize("overrides,message", [
    ({"kd.fsp_init_epochs": 0},
     "config.kd.fsp_init_epochs=0 must be >= 1 (the pre-training stage's "
     "epochs)"),
    ({"teacher.name": TEACHER},
     "method 'fsp' needs as many channels in the student's layer as in the "
     "teacher's; plain_cnn_2_c10.stage1 has 16, cnn_mnist.block1 has 32"),
])
def test_bad_fsp_settings_are_one_line_errors(overrides, message):
  c = _config("fsp", **{"teacher.name": STUDENT, **overrides})
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_tiny_mode_gives_fsp_a_teacher_with_the_students_channels():
  c = helpers.load_config("fsp_resnet8x4.py", "runlocal")
  assert (c.teacher.name, c.kd.fsp_init_epochs) == ("resnet8x4", 2)
  config_lib.validate(c)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("feature_teacher"))
  c = helpers.tiny_config(f"dataset=digits,method=none,student={TEACHER},"
                          "image_size=16", scratch_baseline=False)
  train.train_and_evaluate(c, root)
  return root


def _e2e(method, teacher_dir, tmp_path):
  c = _config(method, **{"teacher.checkpoint": teacher_dir,
                         "kd.feature_logit_method": "vanilla",
                         "teacher.cache_dir": str(tmp_path / "cache")})
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  res = helpers.read_json(str(tmp_path / "run" / "student" / "results.json"))
  assert summary["rows"][-1]["stage"] == f"student ({method})"
  assert res["method"] == method and not res["teacher_cache"]
  assert np.isfinite(res["final_train_metrics"]["feature_loss"])
  assert 0.0 <= res["test"]["accuracy"] <= 1.0
  assert [tuple(p) for p in res["feature_layers"]] == DEFAULT_PAIRS[method]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BETA))
def test_feature_method_end_to_end(method, teacher_dir, tmp_path):
  _e2e(method, teacher_dir, tmp_path)


@pytest.mark.parametrize("overrides,message", [
    ({"kd.feature_layers": "stage1:conv9"},
     "config.kd.feature_layers: 'conv9' is not a feature of cnn_mnist; "
     "allowed: block1, block2, pre_logits"),
    ({"kd.feature_weight": -1.0},
     "config.kd.feature_weight=-1.0 must be >= 0 (0: method 'at''s default "
     "1000)"),
    ({"kd.feature_logit_method": "ctkd"},
     "unknown config.kd.feature_logit_method 'ctkd'; allowed: none, vanilla"),
    ({"kd.feature_layers": "pre_logits"},
     "method 'at' needs feature maps [B, H, W, C]; plain_cnn_2_c10.pre_logits"),
    ({"kd.method": "crd", "kd.feature_layers": "stage1:block1,pre_logits"},
     "method 'crd' takes one layer pair"),
    ({"kd.method": "crd", "kd.crd_momentum": 1.0},
     "config.kd.crd_momentum=1.0 must be in [0, 1)"),
    ({"kd.method": "reviewkd", "kd.reviewkd_warmup_epochs": -1},
     "config.kd.reviewkd_warmup_epochs=-1 must be >= 0 (0: no warm-up)"),
    ({"student.name": "mlp"},
     "mlp has no feature maps"),
])
def test_bad_feature_settings_are_one_line_errors(overrides, message):
  c = _config("at", **overrides)
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_feature_methods_are_not_vmapped():
  assert "trains cell by cell" in sweep.vmap_problem(_config("crd"))
