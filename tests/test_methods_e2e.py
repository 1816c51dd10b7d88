"""Two-stage and chained methods end to end on tiny configs (digits data):
each stage's checkpoint must feed the next, and what the results report must
match an independent evaluation of the saved checkpoints."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import stage
from kd_jax.train import step
from tests import helpers


def _run(tmp_path, arg, **overrides):
  c = helpers.tiny_config("dataset=digits," + arg, **overrides)
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(c, workdir)
  return c, workdir, summary, data.load(c)


def _best(workdir, stage):
  return helpers.restore_raw(
      os.path.join(workdir, stage, "checkpoints", "best"), "model")[1]


def _test_logits(c, model_name, variables, ds, outputs):
  model = models.get_model(model_name, num_classes=outputs)
  x = step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(ds.test.images))
  return np.asarray(model.apply(variables, x, train=False), np.float64)


def _tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_two_stage_fitnets_hint_stage_feeds_kd_stage(tmp_path):
  c, workdir, summary, ds = _run(
      tmp_path, "method=fitnets,student=tiny_cnn,teacher=simple_cnn,"
      "kd.hint_student_layer=block1,kd.hint_teacher_layer=block1,hint_stages=2")
  assert [r["stage"] for r in summary["rows"]] == [
      "teacher", "hint", "scratch", "student (fitnets)"]
  hint = helpers.read_json(os.path.join(workdir, "hint", "results.json"))
  student = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert hint["method"] == "hint" and np.isfinite(
      hint["final_train_metrics"]["hint_loss"])
  assert hint["teacher_checkpoint"] == os.path.join(workdir, "teacher", "checkpoints", "best")
  assert student["init_from"] == os.path.join(workdir, "hint")
  assert "hint_loss" not in student["final_train_metrics"]  # stage 2 is KD only

  # Stage 1 saved the student only (the 1x1 adapter is not part of it) ...
  hint_vars = _best(workdir, "hint")
  like = models.init_shapes("tiny_cnn", 10, c.dataset.image_size)
  assert jax.tree.structure(hint_vars) == jax.tree.structure(like)
  # ... trained the layers up to the guided layer and left the head alone
  # (no gradient reaches it; no weight decay).
  mesh = sharding.make_mesh()
  teacher = train.load_frozen(config_lib.read_specs(c), ds, mesh, workdir)
  fresh = stage.Stage(config_lib.read_specs(c), role="hint", model_name="tiny_cnn", method="hint",
                      stage_dir=str(tmp_path / "unused"), num_epochs=1,
                      learning_rate=c.learning_rate, ds=ds, mesh=mesh,
                      teacher=teacher, hint=("block1", "block1"))
  _, init = fresh.init_state()
  assert init.params["adapter"]["conv"]["kernel"].shape == (1, 1, 50, 88)
  init_p = init.params["student"]
  assert np.array_equal(init_p["head"]["kernel"], hint_vars["params"]["head"]["kernel"])
  assert not np.allclose(init_p["conv1"]["kernel"], hint_vars["params"]["conv1"]["kernel"])
  # Stage 2 starts exactly from stage 1's weights.
  stage2 = stage.Stage(config_lib.read_specs(c), role="student", model_name="tiny_cnn",
                       method="fitnets", stage_dir=str(tmp_path / "unused2"),
                       num_epochs=1, learning_rate=c.learning_rate, ds=ds,
                       mesh=mesh, teacher=teacher,
                       init_from=os.path.join(workdir, "hint"))
  _, s2 = stage2.init_state()
  assert _tree_equal(s2.params["student"], hint_vars["params"])
  assert set(s2.params) == {"student"}


def test_single_stage_fitnets_trains_adapter_beside_student(tmp_path):
  c, workdir, summary, _ = _run(
      tmp_path, "method=fitnets,student=tiny_cnn,teacher=simple_cnn,"
      "kd.hint_student_layer=block1,kd.hint_teacher_layer=block1,kd.hint_weight=10")
  assert [r["stage"] for r in summary["rows"]] == [
      "teacher", "scratch", "student (fitnets)"]
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert res["final_train_metrics"]["hint_loss"] > 0
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  assert state["params"]["adapter"]["conv"]["kernel"].shape == (1, 1, 50, 88)
  assert "adapter" not in _best(workdir, "student")["params"]


def test_teacher_assistant_chain_each_link_teaches_the_next(tmp_path):
  c, workdir, summary, ds = _run(tmp_path, "method=vanilla,assistants=mlp")
  assert [r["stage"] for r in summary["rows"]] == [
      "teacher", "assistant1", "scratch", "student (vanilla)"]
  link = helpers.read_json(os.path.join(workdir, "assistant1_mlp", "results.json"))
  student = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert link["model"] == "mlp" and link["method"] == "vanilla"
  assert link["teacher_checkpoint"] == os.path.join(workdir, "teacher", "checkpoints", "best")
  assert student["teacher_checkpoint"] == os.path.join(
      workdir, "assistant1_mlp", "checkpoints", "best")
  # The student's reported teacher agreement is agreement with the assistant,
  # recomputed here from the two saved checkpoints.
  s = _test_logits(c, c.student.name, _best(workdir, "student"), ds, 10).argmax(-1)
  a = _test_logits(c, "mlp", _best(workdir, "assistant1_mlp"), ds, 10).argmax(-1)
  assert student["test"]["agreement"] == pytest.approx(np.mean(s == a), abs=1e-6)
  assert student["test"]["accuracy"] == pytest.approx(
      np.mean(s == ds.test.labels), abs=1e-6)

  # Resumable link by link: only the missing link is trained again.
  done = {d: os.path.getmtime(os.path.join(workdir, d, "results.json"))
          for d in ("teacher", "assistant1_mlp", "scratch")}
  import shutil
  shutil.rmtree(os.path.join(workdir, "student"))
  again = train.train_and_evaluate(c, workdir)
  for d, mtime in done.items():
    assert os.path.getmtime(os.path.join(workdir, d, "results.json")) == mtime
  assert again["rows"] == summary["rows"]  # deterministic rerun of the link


def test_assistants_with_hints_each_link_guided_by_its_teacher(tmp_path):
  """teacher -> assistant -> student with hints: each link adds the hint
  term between its own guided layer and its teacher's hint layer."""
  c, workdir, summary, _ = _run(
      tmp_path, "method=fitnets,student=tiny_cnn,teacher=simple_cnn,"
      "assistants=simple_cnn,kd.hint_student_layer=block1,"
      "kd.hint_teacher_layer=block1,kd.hint_assistant_layers=block1,"
      "kd.hint_weight=10", scratch_baseline=False, num_epochs=1)
  assert [r["stage"] for r in summary["rows"]] == [
      "teacher", "assistant1", "student (fitnets)"]
  link_dir = os.path.join(workdir, "assistant1_simple_cnn")
  for d, adapter in ((link_dir, (1, 1, 88, 88)),
                     (os.path.join(workdir, "student"), (1, 1, 50, 88))):
    res = helpers.read_json(os.path.join(d, "results.json"))
    assert res["final_train_metrics"]["hint_loss"] > 0
    _, state = helpers.restore_raw(os.path.join(d, "checkpoints", "latest"),
                                   "state")
    assert state["params"]["adapter"]["conv"]["kernel"].shape == adapter
  student = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert student["teacher_checkpoint"] == os.path.join(link_dir, "checkpoints",
                                                       "best")


def test_hint_links_pair_each_model_with_its_teacher():
  c = helpers.tiny_config("method=fitnets", **{
      "student.name": "s", "teacher.name": "t", "kd.assistants": "a1,a2",
      "kd.hint_student_layer": "gs", "kd.hint_teacher_layer": "ht",
      "kd.hint_assistant_layers": "l1,l2"})
  assert config_lib.hint_links(c) == [
      ("a1", "t", ("l1", "ht")), ("a2", "a1", ("l2", "l1")),
      ("s", "a2", ("gs", "l2"))]
  c.kd.hint_assistant_layers = "l1"  # one name for all assistants
  assert [pair for *_, pair in config_lib.hint_links(c)] == [
      ("l1", "ht"), ("l1", "l1"), ("gs", "l1")]
  c.student.name, c.teacher.name, c.kd.assistants = "mlp", "mlp", "mlp,mlp"
  c.kd.hint_assistant_layers = "l1,l2,l3"
  with pytest.raises(UserError, match="need one layer per assistant"):
    config_lib.validate(c)
  c = helpers.tiny_config(
      "dataset=digits,method=fitnets,student=tiny_cnn,teacher=simple_cnn,"
      "assistants=simple_cnn", **{"kd.hint_student_layer": "block1",
                                  "kd.hint_teacher_layer": "block1",
                                  "kd.hint_assistant_layers": "block2"})
  with pytest.raises(UserError, match=r"hint layers do not match in spatial "
                     r"size at 28px: student simple_cnn.block2 is 7x7x176, "
                     r"teacher simple_cnn.block1 is 14x14x88"):
    config_lib.hint_shapes(c, 10, 0)
  with pytest.raises(UserError, match="config.kd.hint_assistant_layers="
                     "'block9' is not a feature of simple_cnn"):
    c.kd.hint_assistant_layers = "block9"
    config_lib.hint_shapes(c, 10, 1)


def test_subclass_teacher_and_student_have_grouped_heads(tmp_path):
  c, workdir, summary, ds = _run(tmp_path, "method=subclass,subclasses=3")
  teacher_vars, student_vars = _best(workdir, "teacher"), _best(workdir, "student")
  assert teacher_vars["params"]["head"]["kernel"].shape[-1] == 30
  assert student_vars["params"]["head"]["kernel"].shape[-1] == 30
  assert _best(workdir, "scratch")["params"]["head"]["kernel"].shape[-1] == 10
  # Evaluated on the classes: class logit = log-sum-exp of its 3 subclasses.
  for role, name, variables in (("teacher", c.teacher.name, teacher_vars),
                                ("student", c.student.name, student_vars)):
    z = _test_logits(c, name, variables, ds, 30).reshape(-1, 10, 3)
    m = z.max(-1, keepdims=True)
    cls = (m[..., 0] + np.log(np.exp(z - m).sum(-1))).argmax(-1)
    res = helpers.read_json(os.path.join(workdir, role, "results.json"))
    assert res["test"]["accuracy"] == pytest.approx(
        np.mean(cls == ds.test.labels), abs=1e-6), role
  # A subclass teacher is refused where a plain (1 logit per class) one is
  # expected, by its metadata.
  with pytest.raises(UserError, match="3 logits per class"):
    checkpointing.load_teacher(
        workdir, expected_model=c.teacher.name, num_classes=10,
        image_size=c.dataset.image_size, sharding=None,
        like_variables=models.init_shapes(c.teacher.name, 10, c.dataset.image_size))


def test_deep_mutual_learning_trains_the_cohort_together(tmp_path):
  c, workdir, summary, ds = _run(tmp_path, "method=dml,peers=mlp")
  assert [r["stage"] for r in summary["rows"]] == [
      "scratch", "student (dml)", "peer1 (dml)"]
  assert not os.path.exists(os.path.join(workdir, "teacher"))  # no teacher
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert [m["model"] for m in res["cohort"]] == [c.student.name, "mlp"]
  # The peer's reported accuracy is that of the peer in the final state.
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  assert set(state["params"]) == {"student", "peer1"}
  peer = _test_logits(c, "mlp", {"params": state["params"]["peer1"]}, ds, 10)
  assert res["cohort"][1]["test"]["accuracy"] == pytest.approx(
      np.mean(peer.argmax(-1) == ds.test.labels), abs=1e-6)
  assert 0 < res["final_train_metrics"]["peer_accuracy"] <= 1
  # Same initial weights as the scratch student; the peer signal changed them.
  assert not _tree_equal(_best(workdir, "student"), _best(workdir, "scratch"))


def test_instance_ctkd_temperature_is_per_example_and_reversed(tmp_path):
  # The quickstart's fixed T = 2 is refused for a learned temperature.
  c, workdir, _, _ = _run(tmp_path, "method=ctkd_instance", **{
      "kd.temperature": config_lib.DEFAULT_TEMPERATURE})
  rows = [r for r in map(__import__("json").loads, open(
      os.path.join(workdir, "student", "logs", "metrics.jsonl")))
          if "temperature" in r]
  steps = c.num_epochs * c.max_steps_per_epoch
  assert sorted(r["step"] for r in rows) == list(range(1, steps + 1))
  assert all(c.kd.t_start <= r["temperature"] <= c.kd.t_start + c.kd.t_end
             for r in rows)
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  assert state["params"]["temperature"]["hidden"]["kernel"].shape == (
      20, c.kd.temperature_hidden)  # input: [teacher logits, student logits]

  # The MLP's parameters sit in the optimizer's gradient-reversed branch:
  # a unit gradient moves them by +lr * lambda, the student by -lr.
  c.kd.lambda_min, c.kd.temperature_momentum, c.optimizer = 0.5, 0.0, "sgd"
  c.momentum = 0.0
  tx = step.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.1, num_epochs=1,
                            steps_per_epoch=10, ctkd=True)
  params = {"student": {"w": jnp.ones(3)},
            "temperature": {"hidden": {"kernel": jnp.ones((2, 2))}}}
  grads = step.scale_temperature_grads(
      methods.KDSpec.from_config(c), jax.tree.map(jnp.ones_like, params),
      epoch=0, cosine=True)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["student"]["w"], -0.1)
  np.testing.assert_allclose(updates["temperature"]["hidden"]["kernel"],
                             c.kd.temperature_lr * 0.5)


def test_fitnets_config_layer_pair_matches_at_echo_size():
  """configs/fitnets_*: guided stage3 and hint block3 are both 14x14 at 112 px
  (VGG16 halves the size 3 times by block3, MobileNetV3-small by stage3)."""
  c = helpers.load_config("fitnets_mobilenet_v3_small.py")
  s, t = config_lib.hint_shapes(c, 4)
  assert s == (1, 14, 14, 24) and t == (1, 14, 14, 256)
  tiny = helpers.load_config("fitnets_mobilenet_v3_small.py", "runlocal")
  assert tiny.teacher.name == "vgg_cifar"
  s, t = config_lib.hint_shapes(tiny, 4)  # 32 px: 4x4 both
  assert s[1:3] == t[1:3] == (4, 4)
