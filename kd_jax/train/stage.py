"""One training stage: the epoch loop and the bookkeeping it shares with
sweeps.

`Stage` trains one model (teacher, assistant, hint stage, KD or scratch
student, or a DML cohort led by the student) with the pure step of step.py,
jitted over the ('data',) mesh. `Tracker` holds what one trained model
needs around the step, whether it trains alone or as one cell of a vmapped
sweep (sweep.py): the loop position, metric flushing and the non-finite
policy, evaluation at the epoch end, early stopping, the checkpoint cadence
and the results dict.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import config_lib
from kd_jax import metrics
from kd_jax import models
from kd_jax import reporting
from kd_jax import weight_spec
from kd_jax.data import datasets as data
from kd_jax.distill import kd_modules
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import evaluate as evaluate_lib
from kd_jax.train import loop as loop_lib
from kd_jax.train import model_init
from kd_jax.train import precise_bn
from kd_jax.train import pretrained
from kd_jax.train import sharding
from kd_jax.train import step as step_lib
from kd_jax.train import teacher_cache


def with_teacher_cache(specs: config_lib.Specs, ds, teacher, mesh, role,
                       hint_layer=None, live=""):
  """(dataset, used): the dataset with the teacher's cached logits (and the
  FitNets hint feature of the train split) attached when the cache is on
  and usable; `live`: why this stage runs its teacher live anyway."""
  ok, why = (False, live) if live else teacher_cache.usable(specs)
  if teacher is None or not specs.teacher.cache_dir:
    return ds, False
  name = type(teacher.model).__name__
  # The evaluation splits are never augmented: their cached logits serve
  # every epoch's validation even when the training batches need the
  # teacher live (or their own views' cache).
  splits = teacher_cache.SPLITS if ok else ("val", "test")
  logits = teacher_cache.load_or_compute(specs, ds, name, teacher, mesh, splits)
  out = dataclasses.replace(ds, **{
      split: dataclasses.replace(getattr(ds, split), teacher_logits=logits[split])
      for split in splits})
  if not ok:
    reporting.log(f"[{role}] teacher cache not used for training batches: "
                  f"{why} (validation and test read it)")
    return out, False
  if hint_layer:
    feats = teacher_cache.load_or_compute_features(specs, ds, name, teacher,
                                                   mesh, hint_layer)
    out = dataclasses.replace(out, train=dataclasses.replace(
        out.train, teacher_features=feats))
  return out, True


def class_weights(loss: config_lib.LossSpec, ds, role):
  """config.loss.class_weights for `ds`'s training split (`[C]` or None),
  logged once: the weights a run used are in its log."""
  weights = step_lib.class_weights(loss, ds.train.labels, ds.num_classes)
  if weights is not None:
    reporting.log(f"[{role}] cross-entropy class weights "
                  f"({loss.class_weights_text}): " + ", ".join(
                      f"{n}={w:.4g}" for n, w in zip(ds.class_names, weights)))
  return weights


class Tracker:
  """Everything around the step for one trained model: loop position,
  metrics, checkpoints, the epoch-end decisions and the results dict."""

  def __init__(self, specs, ds, *, role, model_name, method, stage_dir,
               fingerprint_, subclasses=1, select_best=True):
    self.specs, self.ds, self.role = specs, ds, role
    self.model_name, self.method, self.stage_dir = model_name, method, stage_dir
    self.subclasses, self.select_best = subclasses, select_best
    self.fingerprint = fingerprint_
    self.primary = jax.process_index() == 0
    self.loop = loop_lib.new_loop()
    self.skipped_steps = 0
    self.last_train_metrics = {}
    self.improved = False  # whether the last epoch was the best so far
    self.t0 = time.time()
    os.makedirs(stage_dir, exist_ok=True)
    self.ckpt = checkpointing.StageCheckpoints(stage_dir)
    self.writer = metrics.create_writer(os.path.join(stage_dir, "logs"),
                                        self.primary)

  def meta(self) -> dict:
    ds = self.ds
    return {**self.loop, "model": self.model_name, "role": self.role,
            "num_classes": ds.num_classes, "subclasses": self.subclasses,
            "image_size": self.specs.data.image_size, "dataset": ds.name,
            "normalization": self.specs.data.normalization,
            "class_names": list(ds.class_names),
            "fingerprint": self.fingerprint}

  def restore(self, like_state, sharding_):
    """The latest checkpoint's state (and loop position), or None."""
    restored = self.ckpt.restore_latest(like_state, sharding_,
                                        fingerprint=self.fingerprint)
    if restored is None:
      return None
    state, loop = restored
    self.loop = {**loop_lib.new_loop(), **loop}
    return state

  def save_latest(self, step, state):
    self.ckpt.save_latest(step, state, self.meta())

  @property
  def learned_temperature(self) -> bool:
    return methods.get(self.method).learns_temperature

  def flush(self, rows, step, progress=None) -> dict:
    """Writes `rows` (host metrics of the steps up to `step`, one dict per
    step) and returns their mean; applies config.nan_policy to the steps
    whose update was dropped as non-finite. With `progress`, also the
    training rate and the console line."""
    first = step - len(rows) + 1
    bad = [first + i for i, r in enumerate(rows) if not r["finite"]]
    rows = [{k: v for k, v in r.items() if k != "finite"} for r in rows]
    if bad and self.specs.run.nan_policy == "stop":
      good = self.ckpt.latest.latest_step()
      raise UserError(
          f"[{self.role}] non-finite loss or gradient at step {bad[0]}: "
          "stopped (the update was not applied); last good checkpoint: "
          + (f"step {good} in {self.stage_dir}/checkpoints/latest"
             if good is not None else "none yet")
          + "; config.nan_policy='skip' skips such steps")
    if bad:
      self.skipped_steps += len(bad)
      reporting.log(f"[{self.role}] skipped {len(bad)} step(s) with a "
                    f"non-finite loss or gradient (steps {bad[:5]})")
      rows = [r for i, r in enumerate(rows) if first + i not in bad] or rows
    if self.learned_temperature:  # the learned T (batch mean), every step
      for i, r in enumerate(rows):
        self.writer.write_scalars(first + i, {"temperature": r["temperature"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if not self.learned_temperature:
      mean.pop("temperature")
    self.last_train_metrics = mean
    scalars = {f"train_{k}": v for k, v in mean.items()}
    if progress is not None:
      scalars["steps_per_second"] = progress.update(step, mean["loss"])
      progress.print(step, mean)
    self.writer.write_scalars(step, scalars)
    return mean

  def end_epoch(self, step, val, state, variables) -> bool:
    """Records the epoch's validation metrics, saves the best and the
    latest checkpoints; returns whether the stage stops early."""
    epoch = self.loop["epoch"]
    scalars = {k: v for k, v in val.items()
               if k not in ("confusion", "per_class_recall") and v is not None}
    scalars |= {f"recall_{name}": r for name, r in zip(
        self.ds.class_names, val.get("per_class_recall", ())) if r is not None}
    self.writer.write_scalars(step, {f"val_{k}": v for k, v in scalars.items()}
                              | {"epoch": epoch + 1})
    self.loop["history"].append({"epoch": epoch + 1, "step": step, **scalars})
    problem = (metrics.failure_warning(val["confusion"], self.ds.class_names)
               if self.select_best and "confusion" in val else None)
    if problem:  # a run that learnt nothing says so at once
      hint = ("" if self.specs.run.bn_recalibration_steps else
              "; config.bn_recalibration_steps=50 recomputes them")
      reporting.log(f"kd_jax: warning: [{self.role}] {self.model_name} "
                    f"{problem} at epoch {epoch + 1}: it has learnt nothing "
                    "that holds in inference mode (too short a run, or "
                    f"BatchNorm statistics that do not describe the data{hint})")
    # A hint stage (FitNets stage 1) has no trained head: it keeps its last
    # epoch instead of selecting on validation accuracy.
    value = val.get(self.specs.run.select_metric)
    # An undefined metric (AUC on a val split lacking a class) improves
    # nothing, except that the first epoch is always a best.
    improved = (not self.select_best or self.loop["best_epoch"] < 0
                or (value is not None and value > self.loop["best_val"]))
    if improved:
      self.loop.update(best_val=-1.0 if value is None else value,
                       best_epoch=epoch + 1, bad_epochs=0)
    else:
      self.loop["bad_epochs"] += 1
    patience = (self.specs.run.early_stopping_patience if self.select_best
                else 0)
    if patience and self.loop["bad_epochs"] >= patience:
      self.loop["stopped"] = True  # a resumed run stops too
    self.loop.update(epoch=epoch + 1, step_in_epoch=0)
    if improved:
      self.ckpt.save_best(step, variables, self.meta())
    self.save_latest(step, state)
    self.improved = improved
    return self.loop["stopped"]

  def result(self, *, step, test, best_vars, teacher=None, cache_used=False,
             state=None) -> dict:
    """The stage's results.json (written by `finish`)."""
    loop, c = self.loop, self.specs
    res = {
        "role": self.role, "model": self.model_name, "method": self.method,
        "dataset": self.ds.name, "num_classes": self.ds.num_classes,
        "train_examples": len(self.ds.train),
        "image_size": c.data.image_size,
        "params": model_init.param_count(best_vars["params"]),
        "size_mb": model_init.size_mb(best_vars), "test": test,
        "select_metric": c.run.select_metric, "best_val": loop["best_val"],
        "best_val_accuracy": next(
            (h["accuracy"] for h in loop["history"]
             if h["epoch"] == loop["best_epoch"]), -1.0),
        "best_epoch": loop["best_epoch"],
        "epochs_run": len(loop["history"]), "steps": step,
        "history": loop["history"], "train_seconds": loop["train_seconds"],
        "wall_seconds_this_process": time.time() - self.t0,
        "train_images_per_second": (
            step * c.data.batch_size / max(loop["train_seconds"], 1e-9)),
        "checkpoint": os.path.abspath(
            os.path.join(self.stage_dir, "checkpoints", "best")),
        "teacher_cache": cache_used,
        "skipped_nonfinite_steps": self.skipped_steps,
    }
    if teacher is not None:
      res["teacher_checkpoint"] = teacher.path
    if state is not None and methods.get(self.method).temperature == "learned":
      res["final_temperature"] = float(losses.ctkd_temperature(
          state.params["temperature"], t_start=c.kd.t_start, t_end=c.kd.t_end))
    if self.last_train_metrics:
      res["final_train_metrics"] = self.last_train_metrics
    return res

  def finish(self, res) -> dict:
    if self.primary:
      reporting.write_json(os.path.join(self.stage_dir, "results.json"), res)
    self.ckpt.close()
    self.writer.close()
    return res


class Stage:
  """One training run of one model (teacher, assistant, hint stage, KD
  student, scratch student, or a DML cohort led by the student)."""

  def __init__(self, specs: config_lib.Specs, *, role, model_name, method,
               stage_dir, num_epochs, learning_rate, ds, mesh,
               teacher: step_lib.Frozen | None = None, subclasses=1,
               init_from="", select_best=True, peers=(), hint=None,
               frozen_epochs=0, feature_from=""):
    self.specs, self.role, self.method = specs, role, method
    # The pre-training stage whose feature module params this stage's
    # feature module freezes (methods.Pretrain, hands_over='feature').
    self.feature_from = feature_from
    ds = data.stage_data(ds, role, specs.data.transfer_limit)
    self.model_name, self.stage_dir = model_name, stage_dir
    self.num_epochs, self.learning_rate = num_epochs, learning_rate
    self.ds, self.mesh, self.teacher = ds, mesh, teacher
    self.teacher_vars = teacher.variables if teacher is not None else None
    self.subclasses = subclasses
    self.init_from = init_from  # weights the model starts from (pretrained.py)
    # Two-phase fine-tuning: the first `frozen_epochs` train the head only.
    self.frozen_epochs = frozen_epochs
    self.select_best = select_best  # False: keep the last epoch, no early stop
    self.hint = hint
    self.model = models.get_model(model_name,
                                  num_classes=ds.num_classes * subclasses)
    # DML cohort: [(params key, model name, module)]
    self.peers = [(f"peer{i + 1}", name,
                   models.get_model(name, num_classes=ds.num_classes))
                  for i, name in enumerate(peers)]
    self.spe = data.steps_per_epoch(len(ds.train), self.specs.data.batch_size,
                                    self.specs.run.max_steps_per_epoch)
    self.adapter = self.temperature_module = self.feature = None
    self.feature_layers = ()
    if hint:
      self.adapter = kd_modules.HintAdapter(
          self.layer_shapes[1][hint[1]][-1])
    if methods.get(method).temperature == "instance":
      k = specs.kd
      self.temperature_module = kd_modules.InstanceTemperature(
          hidden=k.temperature_hidden, t_start=k.t_start, t_end=k.t_end)
    term = methods.get(method).feature
    if term is not None:
      self.feature_layers = config_lib.feature_layer_pairs(
          method, specs.loss.feature_layers, *self.layer_shapes,
          student_name=model_name, teacher_name=type(teacher.model).__name__)
      bn = models.bn_before_relu(teacher.model, teacher.variables)
      self.feature = kd_modules.FEATURE_MODULES[term.module](
          specs.kd, kd_modules.FeatureContext(
              ds.train.labels, tuple(bn.get(b) for _, b in self.feature_layers)))

  @functools.cached_property
  def layer_shapes(self) -> tuple[dict, dict]:
    """({feature: shape} of the model, {feature: shape} of its teacher)."""
    size, t = self.specs.data.image_size, self.teacher
    like = models.init_shapes(self.model_name,
                              self.ds.num_classes * self.subclasses, size)
    return (models.module_feature_shapes(self.model, like, size),
            models.module_feature_shapes(t.model, t.variables, size))

  def spec(self) -> step_lib.StepSpec:
    t = self.teacher
    return step_lib.make_spec(
        self.specs, self.model, self.method, steps_per_epoch=self.spe,
        teacher=t.model if t is not None else None,
        teacher_subclasses=t.subclasses if t is not None else 1,
        subclasses=self.subclasses,
        peers=[(k, m) for k, _, m in self.peers], hint=self.hint,
        adapter=self.adapter, temperature_module=self.temperature_module,
        feature=self.feature, feature_layers=self.feature_layers)

  def _student_variables(self, rng):
    fresh = model_init.init_variables(self.model, self.specs.data.image_size,
                                      self.mesh, rng)
    if not self.init_from:
      return fresh
    return pretrained.initial_variables(
        self.init_from, model_name=self.model_name,
        outputs=self.ds.num_classes * self.subclasses,
        image_size=self.specs.data.image_size,
        fresh={"params": fresh[0], "batch_stats": fresh[1]},
        sharding_=sharding.replicated(self.mesh), role=self.role)

  def optimizers(self) -> tuple:
    """(tx,), or with fine-tuning (frozen-phase tx, full tx): one state."""
    ctkd = methods.get(self.method).learns_temperature
    kw = dict(learning_rate=self.learning_rate, num_epochs=self.num_epochs,
              steps_per_epoch=self.spe, ctkd=ctkd)
    if not self.frozen_epochs:
      return (step_lib.make_optimizer(self.specs.optimizer, self.specs.kd,
                                      **kw),)
    head = models.head_mask(self.model_name, self.ds.num_classes *
                            self.subclasses, self.specs.data.image_size)
    return step_lib.finetune_optimizers(self.specs.optimizer, self.specs.kd,
                                        head["params"], **kw)

  def init_state(self):
    """(optimizer, initial TrainState): fresh weights, or the weights of
    `init_from` (FitNets stage 2 starts from stage 1's student)."""
    mesh = self.mesh
    repl = sharding.replicated(mesh)
    tx = self.optimizers()[-1]
    rng = model_init.init_rng(self.specs.run.seed, self.role)
    s_params, s_stats = self._student_variables(rng)
    params, batch_stats = {"student": s_params}, {"student": s_stats}
    for i, (key, _, module) in enumerate(self.peers):
      params[key], batch_stats[key] = model_init.init_variables(
          module, self.specs.data.image_size, mesh,
          jax.random.fold_in(rng, 100 + i))
    if methods.get(self.method).temperature == "learned":
      params["temperature"] = jnp.float32(self.specs.kd.init_raw)
    if self.temperature_module is not None:
      z = jnp.zeros((1, self.ds.num_classes * self.subclasses), jnp.float32)
      params["temperature"] = jax.jit(
          lambda r: self.temperature_module.init(r, z, z)["params"],
          out_shardings=repl)(jax.random.fold_in(rng, 7))
    if self.adapter is not None:
      s_shape = self.layer_shapes[0][self.hint[0]]
      f = jnp.zeros((1,) + s_shape[1:], jnp.float32)
      params["adapter"] = jax.jit(lambda r: self.adapter.init(r, f)["params"],
                                  out_shardings=repl)(jax.random.fold_in(rng, 8))
    if self.feature is not None:
      params["feature"], batch_stats["feature"] = self.feature_variables(
          jax.random.fold_in(rng, 9))
    if self.feature_from:
      frozen = batch_stats["feature"][kd_modules.PRETRAINED]
      batch_stats["feature"][kd_modules.PRETRAINED] = (
          pretrained.stage_feature_params(self.feature_from, frozen))
    state = jax.jit(functools.partial(step_lib.new_train_state, tx),
                    out_shardings=repl)(params, batch_stats)
    return tx, state

  def feature_variables(self, rng):
    """(params, other collections) of the feature term's module, fresh."""
    s_shapes, t_shapes = self.layer_shapes
    like = lambda shapes, layers: [jax.ShapeDtypeStruct(
        (2,) + shapes[k][1:], jnp.float32) for k in layers]
    s = like(s_shapes, [a for a, _ in self.feature_layers])
    t = like(t_shapes, [b for _, b in self.feature_layers])
    return jax.jit(lambda r: kd_modules.feature_variables(self.feature, s, t, r),
                   out_shardings=sharding.replicated(self.mesh))(rng)

  def describe_feature_term(self) -> str:
    beta = methods.feature_weight(self.specs.kd,
                                  methods.get(self.method))
    return (f"[{self.role}] {self.method}: {self.specs.kd.feature_logit_method}"
            f" loss + {beta:g} x feature term on (student:teacher) "
            + ", ".join(f"{a}:{b}" for a, b in self.feature_layers))

  def step_fns(self, spec, repl) -> list:
    """The jitted train step of each phase (one without fine-tuning)."""
    specs = [spec]
    if self.frozen_epochs:
      specs = [dataclasses.replace(spec, frozen_backbone=True), spec]
    return [jax.jit(step_lib.make_train_step(sp, tx),
                    in_shardings=(repl, sharding.batch_sharding(self.mesh),
                                  repl, repl),
                    out_shardings=(repl, repl), donate_argnums=0)
            for sp, tx in zip(specs, self.optimizers())]

  @property
  def results_path(self):
    return os.path.join(self.stage_dir, "results.json")

  def run(self) -> dict:
    if os.path.exists(self.results_path):
      with open(self.results_path) as f:
        res = json.load(f)
      reporting.log(f"[{self.role}] already finished: test accuracy "
                    f"{res['test']['accuracy']:.4f} (from {self.results_path})")
      return res
    return self._train()

  def _train(self) -> dict:
    """Trains the stage (`loop.run_epochs`), then tests its best epoch."""
    specs, mesh = self.specs, self.mesh
    weights = class_weights(specs.loss, self.ds, self.role)  # before I/O
    ds, cache_used = with_teacher_cache(
        specs, self.ds, self.teacher, mesh, self.role,
        self.hint[1] if self.hint else None,
        live="" if self.feature is None else (
            f"method {self.method!r} reads the teacher's feature maps of "
            "every batch, so the teacher runs live"))
    if self.feature is not None:
      reporting.log(self.describe_feature_term())
    tr = Tracker(self.specs, ds, role=self.role, model_name=self.model_name,
                 method=self.method, stage_dir=self.stage_dir,
                 fingerprint_=checkpointing.fingerprint(
                     specs, self.ds, self.role, self.model_name),
                 subclasses=self.subclasses, select_best=self.select_best)
    stepper, spec = self._stepper(tr, ds, weights)
    views = None if cache_used else teacher_cache.augmented_views(
        specs, self.ds, self.teacher, spec, self.spe, mesh, self.role,
        live="FitNets hints and feature terms read the teacher's features"
        if self.hint or self.feature is not None else "")
    step = loop_lib.run_epochs(
        stepper, epoch_batches(self.specs.data, ds.train, self.spe,
                               views, indexed=self.feature is not None),
        step=stepper.start_step, num_epochs=self.num_epochs,
        steps_per_epoch=self.spe, log_every=self.specs.run.log_every_steps,
        checkpoint_every=self.specs.run.checkpoint_every_steps,
        prefetch_depth=self.specs.data.prefetch_depth)
    return self._finish(tr, stepper, spec, step, cache_used)

  def _stepper(self, tr, ds, weights):
    """(the single-state stepper, its step spec), resumed from the stage's
    latest checkpoint when there is one."""
    _, state = self.init_state()
    repl = sharding.replicated(self.mesh)
    restored = tr.restore(state, repl)
    if restored is not None:
      state = restored
      reporting.log(f"[{self.role}] resumed from step {int(state.step)} (epoch "
                    f"{tr.loop['epoch'] + 1}, batch {tr.loop['step_in_epoch']})")
    spec = self.spec()
    eval_jit = jax.jit(step_lib.make_eval_step(
        spec.preprocess, self.model, subclasses=self.subclasses,
        teacher=spec.teacher, teacher_subclasses=spec.teacher_subclasses))
    # A teacher model, or only its logits (`teacher.logits`) in the data.
    has_teacher = self.teacher is not None or ds.train.teacher_logits is not None
    evaluate = lambda variables, split, path=None: evaluate_lib.evaluate(
        eval_jit, variables, self.teacher_vars, getattr(ds, split),
        self.specs.data, self.mesh, has_teacher, path)
    stepper = SingleStepper(
        tr, state, self.step_fns(spec, repl),
        jax.device_put(step_lib.hyperparams(self.specs, weights), repl),
        self.teacher_vars, self.mesh, evaluate,
        progress=reporting.Progress(self.role, self.model_name,
                                    self.num_epochs * self.spe,
                                    int(state.step), self.spe),
        frozen_epochs=self.frozen_epochs, num_epochs=self.num_epochs,
        stage_dir=self.stage_dir, recalibrate=bn_recalibrator(
            self.specs, self.model, spec.preprocess, ds.train, self.mesh,
            self.role))
    return stepper, spec

  def _finish(self, tr, stepper, spec, step, cache_used) -> dict:
    """Tests the best epoch's variables and writes results.json."""
    tr.ckpt.wait()
    tr.writer.flush()
    repl = sharding.replicated(self.mesh)
    state = stepper.state
    best_vars, _ = tr.ckpt.restore_best(
        model_init.inference_variables(state), repl)
    test = stepper.evaluate(best_vars, "test", os.path.join(
        self.stage_dir, evaluate_lib.PREDICTIONS))
    res = tr.result(step=step, test=test, best_vars=best_vars,
                    teacher=self.teacher, cache_used=cache_used, state=state)
    if self.feature_from:
      res["feature_from"] = os.path.abspath(self.feature_from)
    if self.init_from:
      res["init_from"] = (self.init_from if weight_spec.foreign_source(
          self.init_from) else os.path.abspath(self.init_from))
    if self.peers:
      res["cohort"] = self._cohort_results(state, test)
    if self.feature is not None:
      res["feature_layers"] = [list(p) for p in self.feature_layers]
      res["feature_weight"] = methods.feature_weight(spec.kd,
                                                     methods.get(self.method))
    return tr.finish(res)

  def _cohort_results(self, state, test):
    """DML: every cohort member's test metrics, from the final state."""
    out = [{"model": self.model_name, "test": test}]
    preprocess = step_lib.Preprocess.from_spec(self.specs.data)
    for key, name, module in self.peers:
      peer_vars = step_lib.model_variables(state.params[key],
                                           state.batch_stats[key])
      peer_test = evaluate_lib.evaluate(jax.jit(step_lib.make_eval_step(preprocess, module)),
                           peer_vars, None, self.ds.test, self.specs.data,
                           self.mesh, False)
      out.append({"model": name, "test": peer_test, "source": "final state",
                  "params": model_init.param_count(peer_vars["params"]),
                  "size_mb": model_init.size_mb(peer_vars)})
    return out


def bn_recalibrator(specs: config_lib.Specs, model, preprocess, train_split,
                    mesh, role):
  """`variables -> variables` with precise BatchNorm statistics over
  `bn_recalibration_steps` training batches (`precise_bn`), or None when
  it is off. The batches are the first of the data order, not augmented,
  so every evaluation of a run recalibrates on the same images."""
  n, d = specs.run.bn_recalibration_steps, specs.data
  if not n:
    return None
  spe = data.steps_per_epoch(len(train_split), d.batch_size)
  stats_fn = precise_bn.make_batch_stats_fn(model, preprocess)

  def images():
    for epoch in range(-(-n // spe)):
      for batch in data.train_batches(
          train_split, global_batch=d.batch_size, seed=d.data_seed,
          epoch=epoch, num_steps=min(spe, n - epoch * spe),
          image_size=d.image_size, process_index=jax.process_index(),
          process_count=jax.process_count(), balanced=d.balanced_sampling):
        yield batch["image"]
  reporting.log(f"[{role}] precise BN: BatchNorm statistics recomputed over "
                f"{n} training batches before every evaluation")
  return lambda variables: precise_bn.recalibrate(stats_fn, variables,
                                                  images(), mesh)


def epoch_batches(data_spec: config_lib.DataSpec, train_split,
                  steps_per_epoch, views=None, *, indexed=False):
  """`(epoch, start_step, step) -> host batches` of the training split for
  `loop.run_epochs`, with the cached teacher logits of augmented views
  attached when `views` (teacher_cache.AugmentedViews) is given."""
  def batches(epoch, start_step, step):
    out = data.train_batches(
        train_split, indexed=indexed, global_batch=data_spec.batch_size,
        seed=data_spec.data_seed, epoch=epoch, num_steps=steps_per_epoch,
        start_step=start_step, image_size=data_spec.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        balanced=data_spec.balanced_sampling)
    return out if views is None else views.attach(out, epoch, start_step, step)
  return batches


class SingleStepper:
  """One train state through `loop.run_epochs`: the fine-tuning phases'
  step functions, metric flushing, checkpoints and the epoch's validation
  (`Tracker`)."""

  def __init__(self, tracker, state, step_jits, hp, teacher_vars, mesh,
               evaluate, *, progress, frozen_epochs, num_epochs, stage_dir,
               recalibrate=None):
    self.tr, self.state, self.step_jits = tracker, state, step_jits
    self.hp, self.teacher_vars, self.mesh = hp, teacher_vars, mesh
    self.evaluate, self.progress = evaluate, progress
    self.frozen_epochs, self.num_epochs = frozen_epochs, num_epochs
    self.stage_dir, self.step_jit = stage_dir, step_jits[-1]
    self.recalibrate = recalibrate  # precise BN before evaluation, or None
    # The step on the host: reading state.step would wait for the device
    # every step and stop the host from preparing the next batches.
    self.start_step = int(state.step)

  @property
  def loop(self):
    return self.tr.loop

  def finished(self, num_epochs) -> bool:
    return self.loop["epoch"] >= num_epochs or self.loop["stopped"]

  def begin_epoch(self):
    self.step_jit = self.step_jits[-1]
    if self.loop["epoch"] < self.frozen_epochs:
      self.step_jit = self.step_jits[0]
      reporting.log(f"[{self.tr.role}] fine-tuning epoch "
                    f"{self.loop['epoch'] + 1}/{self.frozen_epochs}: head "
                    "only, backbone frozen, lr "
                    f"{self.tr.specs.optimizer.frozen_lr:g}")

  def put(self, host_batch):
    return sharding.global_batch(host_batch, self.mesh)

  def step(self, batch, step):
    del step
    self.state, metrics_ = self.step_jit(self.state, batch, self.hp,
                                         self.teacher_vars)
    self.loop["step_in_epoch"] += 1
    return metrics_

  def flush(self, pending, step):
    self.tr.flush(jax.device_get(pending), step, self.progress)

  def add_seconds(self, seconds):
    self.loop["train_seconds"] += seconds

  def save_latest(self, step):
    self.tr.save_latest(step, self.state)

  def wait(self):
    self.tr.ckpt.wait()
    self.tr.writer.flush()

  def preempted_message(self, step) -> str:
    return (f"[{self.tr.role}] SIGTERM: saved a checkpoint at step {step} in "
            f"{self.stage_dir}/checkpoints/latest; rerun the same command to "
            "resume")

  def end_epoch(self, step):
    tr, run = self.tr, self.tr.specs.run
    variables = model_init.inference_variables(self.state)
    if self.recalibrate is not None:
      variables = self.recalibrate(variables)
    val = self.evaluate(variables, "val")
    stop = tr.end_epoch(step, val, self.state, variables)
    reporting.log(f"[{tr.role} {tr.model_name}] epoch {self.loop['epoch']}/"
                  f"{self.num_epochs}: val acc {val['accuracy']:.4f} "
                  f"macro-F1 {val['macro_f1']:.4f}"
                  + (f" {run.select_metric} "
                     f"{reporting.fmt(val[run.select_metric])}"
                     if run.select_metric not in ("accuracy", "macro_f1")
                     else "")
                  + (" (best)" if tr.improved else ""))
    if stop:
      reporting.log(f"[{tr.role}] early stop: no val improvement for "
                    f"{run.early_stopping_patience} epochs")
