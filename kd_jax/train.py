"""Training: teacher (cross-entropy), KD student, and scratch student.

`train_and_evaluate(config, workdir)` runs the stages a config asks for:
  teacher/  trained here with plain cross-entropy unless
            `config.teacher.checkpoint` names a trained one;
  student/  the student trained with `config.kd.method`;
  scratch/  the same student without a teacher (`config.scratch_baseline`).
Each stage resumes from its latest checkpoint and is skipped when its
`results.json` exists. The run's summary lands in `workdir/results.json`.

The train step is one pure function under `jax.jit`, data-parallel over the
('data',) mesh (see sharding.py); the frozen teacher is an argument of the
step, run in inference mode, and never saved with the student.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import checkpointing, config_lib, data, losses, metrics, models
from kd_jax import reporting, sharding
from kd_jax.config_lib import UserError


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any  # {'student': ...} (+ {'temperature': raw} for CTKD)
  batch_stats: Any
  opt_state: Any


# --------------------------------------------------------------- optimizer


def make_optimizer(config, *, learning_rate, num_epochs, steps_per_epoch,
                   ctkd: bool):
  """Student optimizer; with CTKD, a multi_transform whose 'temperature' part
  ascends the loss: update = +mu * lambda(epoch) * dL/draw (seeds' eq. 6)."""
  total = max(1, num_epochs * steps_per_epoch)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  lr = optax.warmup_cosine_decay_schedule(
      0.0 if warmup else learning_rate, learning_rate, warmup, total)
  if config.optimizer == "adam":
    student_tx = optax.adamw(lr, weight_decay=config.weight_decay)
  else:
    student_tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                             optax.sgd(lr, momentum=config.momentum))
  transforms = {"student": student_tx}
  if ctkd:
    kd = config.kd
    lam = functools.partial(
        losses.curriculum_lambda, schedule=kd.schedule,
        lambda_min=kd.lambda_min, lambda_max=kd.lambda_max,
        epoch_cap=kd.epoch_cap)
    transforms["temperature"] = optax.chain(
        optax.scale(-1.0),  # gradient reversal: the temperature maximises L
        optax.scale_by_schedule(lambda count: lam(count // steps_per_epoch)),
        optax.sgd(kd.temperature_lr, momentum=kd.temperature_momentum or None))
  return optax.multi_transform(
      transforms, lambda params: {k: k for k in params})


# ------------------------------------------------------------------ steps


def _preprocess(config, images, rng=None):
  dc = config.dataset
  return data.preprocess(
      images, image_size=dc.image_size, normalization=dc.normalization,
      rng=rng, random_crop=dc.random_crop, random_flip=dc.random_flip,
      crop_padding=dc.crop_padding)


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {
      "params": params}


def make_train_step(config, student, teacher, method: str, tx):
  """Returns the pure `train_step(state, batch, teacher_vars)`.

  `student`/`teacher` are linen modules and `tx` the optimizer: static
  structure closed over; every array is an argument.
  """
  kd = config.kd
  base_rng = jax.random.PRNGKey(config.seed)

  def train_step(state: TrainState, batch, teacher_vars):
    images, labels_B = batch
    rng = jax.random.fold_in(base_rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    x = _preprocess(config, images, aug_rng)
    teacher_logits_BxC = None
    if teacher is not None:
      teacher_logits_BxC = jax.lax.stop_gradient(
          teacher.apply(teacher_vars, x, train=False))

    def loss_fn(params):
      logits_BxC, new_vars = student.apply(
          _variables(params["student"], state.batch_stats), x, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      if method == "none":
        temperature = jnp.float32(1.0)
        loss = losses.cross_entropy(logits_BxC, labels_B)
      elif method == "conditional":
        temperature = jnp.float32(kd.temperature)
        loss = losses.conditional_kd_loss(
            logits_BxC, teacher_logits_BxC, labels_B, temperature=temperature)
      else:
        temperature = (losses.ctkd_temperature(
            params["temperature"], t_start=kd.t_start, t_end=kd.t_end)
                       if method == "ctkd" else jnp.float32(kd.temperature))
        loss = losses.kd_loss(logits_BxC, teacher_logits_BxC, labels_B,
                              temperature=temperature, alpha=kd.alpha)
      return loss, (logits_BxC, new_vars.get("batch_stats", {}), temperature)

    (loss, (logits_BxC, batch_stats, temperature)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(state.params))
    updates, opt_state = tx.update(
        grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    pred_B = jnp.argmax(logits_BxC, -1)
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean(pred_B == labels_B),
        "temperature": temperature,
    }
    if teacher_logits_BxC is not None:
      step_metrics["agreement"] = jnp.mean(
          pred_B == jnp.argmax(teacher_logits_BxC, -1))
    new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
    return new_state, step_metrics

  return train_step


def make_eval_step(config, model, teacher):
  def eval_step(variables, teacher_vars, images, labels_B, mask_B):
    x = _preprocess(config, images)
    logits_BxC = model.apply(variables, x, train=False)
    if teacher is not None:
      t_logits = teacher.apply(teacher_vars, x, train=False)
      agree_B = (jnp.argmax(logits_BxC, -1) == jnp.argmax(t_logits, -1))
    else:
      agree_B = jnp.zeros_like(mask_B)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    return metrics.EvalMetrics.single_from_model_output(
        logits=logits_BxC, labels=labels_B, mask=mask_B, loss=loss_B,
        agree=agree_B.astype(jnp.float32))
  return eval_step


def evaluate(eval_step_jit, variables, teacher_vars, split, config, mesh,
             has_teacher):
  acc = None
  for images, labels, mask in data.eval_batches(
      split, global_batch=config.eval_batch_size,
      image_size=config.dataset.image_size,
      process_index=jax.process_index(), process_count=jax.process_count()):
    batch = sharding.global_batch((images, labels, mask), mesh)
    m = eval_step_jit(variables, teacher_vars, *batch)
    acc = m if acc is None else acc.merge(m)
  return metrics.summarize(jax.device_get(acc), has_teacher)


# ------------------------------------------------------------------ stage


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def size_mb(variables, bytes_per_value=4) -> float:
  """Saved inference variables (params + BN stats), float32, in MB (1e6 B)."""
  return param_count(variables) * bytes_per_value / 1e6


def init_variables(model, config, mesh, rng):
  variables = jax.jit(
      lambda r: models.init(model, r, config.dataset.image_size),
      out_shardings=sharding.replicated(mesh))(rng)
  return variables["params"], variables.get("batch_stats", {})


class Stage:
  """One training run of one model (teacher, KD student, or scratch)."""

  def __init__(self, config, *, role, model_name, method, stage_dir,
               num_epochs, learning_rate, ds, mesh, teacher=None):
    self.config, self.role, self.method = config, role, method
    self.model_name, self.stage_dir = model_name, stage_dir
    self.num_epochs, self.learning_rate = num_epochs, learning_rate
    self.ds, self.mesh = ds, mesh
    self.teacher_model, self.teacher_vars = teacher or (None, None)
    self.model = models.get_model(model_name, num_classes=ds.num_classes)
    self.primary = jax.process_index() == 0

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
    config, mesh, ds = self.config, self.mesh, self.ds
    t0 = time.time()
    os.makedirs(self.stage_dir, exist_ok=True)
    spe = data.steps_per_epoch(len(ds.train), config.batch_size,
                               config.max_steps_per_epoch)
    ctkd = self.method == "ctkd"
    tx = make_optimizer(config, learning_rate=self.learning_rate,
                        num_epochs=self.num_epochs, steps_per_epoch=spe,
                        ctkd=ctkd)
    # Scratch and KD students start from the same initial weights (a paired
    # comparison: only the teacher's signal differs).
    rng = jax.random.PRNGKey(config.seed)
    rng = jax.random.fold_in(rng, {"teacher": 1, "student": 2, "scratch": 2}[self.role])
    params, batch_stats = init_variables(self.model, config, mesh, rng)
    params = {"student": params}
    if ctkd:
      params["temperature"] = jnp.float32(config.kd.init_raw)
    repl = sharding.replicated(mesh)
    state = jax.jit(lambda p, b: TrainState(jnp.int32(0), p, b, tx.init(p)),
                    out_shardings=repl)(params, batch_stats)

    ckpt = checkpointing.StageCheckpoints(self.stage_dir)
    loop = {"epoch": 0, "step_in_epoch": 0, "best_val": -1.0, "best_epoch": -1,
            "bad_epochs": 0, "history": [], "train_seconds": 0.0}
    restored = ckpt.restore_latest(state, repl)
    if restored is not None:
      state, loop = restored
      reporting.log(f"[{self.role}] resumed from step {int(state.step)} "
                    f"(epoch {loop['epoch'] + 1}, batch {loop['step_in_epoch']})")

    train_step = make_train_step(config, self.model, self.teacher_model,
                                 self.method, tx)
    bsh = sharding.batch_sharding(mesh)
    step_jit = jax.jit(train_step, in_shardings=(repl, bsh, repl),
                       out_shardings=(repl, repl), donate_argnums=0)
    eval_jit = jax.jit(make_eval_step(config, self.model, self.teacher_model))
    writer = metrics.create_writer(os.path.join(self.stage_dir, "logs"),
                                   self.primary)
    has_teacher = self.teacher_model is not None
    total_steps = self.num_epochs * spe
    # The step on the host: reading state.step would wait for the device
    # every step and stop the host from preparing the next batches.
    step = int(state.step)
    progress = reporting.Progress(self.role, self.model_name, total_steps,
                                  step, spe)
    stop = False

    def meta():
      return {**loop, "model": self.model_name, "role": self.role,
              "num_classes": ds.num_classes, "image_size": config.dataset.image_size,
              "dataset": ds.name, "class_names": list(ds.class_names)}

    while loop["epoch"] < self.num_epochs and not stop:
      epoch = loop["epoch"]
      pending = []
      batches = data.train_batches(
          ds.train, global_batch=config.batch_size, seed=config.seed,
          epoch=epoch, num_steps=spe, start_step=loop["step_in_epoch"],
          image_size=config.dataset.image_size,
          process_index=jax.process_index(), process_count=jax.process_count())
      t_epoch = time.time()
      for images, labels in batches:
        batch = sharding.global_batch((images, labels), mesh)
        state, step_metrics = step_jit(state, batch, self.teacher_vars)
        pending.append(step_metrics)
        loop["step_in_epoch"] += 1
        step += 1
        if len(pending) >= config.log_every_steps:
          self._flush(writer, pending, step, progress)
          pending = []
          if not np.isfinite(progress.last_loss):
            raise UserError(
                f"[{self.role}] loss is {progress.last_loss} at step {step}; "
                f"last good checkpoint: step {ckpt.latest.latest_step()} in "
                f"{self.stage_dir}/checkpoints/latest")
        if (loop["step_in_epoch"] < spe and config.checkpoint_every_steps and
            step % config.checkpoint_every_steps == 0):
          loop["train_seconds"] += time.time() - t_epoch
          t_epoch = time.time()
          ckpt.save_latest(step, state, meta())
      if pending:
        self._flush(writer, pending, step, progress)
      loop["train_seconds"] += time.time() - t_epoch

      val = evaluate(eval_jit, self._inference_vars(state), self.teacher_vars,
                     ds.val, config, mesh, has_teacher)
      writer.write_scalars(step, {
          f"val_{k}": v for k, v in val.items() if k != "confusion"} | {
              "epoch": epoch + 1})
      loop["history"].append({"epoch": epoch + 1, "step": step,
                              **{k: v for k, v in val.items() if k != "confusion"}})
      improved = val["accuracy"] > loop["best_val"]
      if improved:
        loop.update(best_val=val["accuracy"], best_epoch=epoch + 1, bad_epochs=0)
      else:
        loop["bad_epochs"] += 1
      loop.update(epoch=epoch + 1, step_in_epoch=0)
      reporting.log(f"[{self.role} {self.model_name}] epoch {epoch + 1}/"
                    f"{self.num_epochs}: val acc {val['accuracy']:.4f} "
                    f"macro-F1 {val['macro_f1']:.4f}"
                    + (" (best)" if improved else ""))
      patience = config.early_stopping_patience
      if patience and loop["bad_epochs"] >= patience:
        reporting.log(f"[{self.role}] early stop: no val improvement for "
                      f"{patience} epochs")
        stop = True
        loop["epoch"] = self.num_epochs  # the resumed run must stop too
      if improved:
        ckpt.save_best(step, self._inference_vars(state), meta())
      ckpt.save_latest(step, state, meta())

    ckpt.wait()
    writer.flush()
    best_vars, _ = ckpt.restore_best(self._inference_vars(state), repl)
    test = evaluate(eval_jit, best_vars, self.teacher_vars, ds.test, config,
                    mesh, has_teacher)
    res = {
        "role": self.role, "model": self.model_name, "method": self.method,
        "dataset": ds.name, "num_classes": ds.num_classes,
        "image_size": config.dataset.image_size,
        "params": param_count(best_vars["params"]),
        "size_mb": size_mb(best_vars),
        "test": test,
        "best_val_accuracy": loop["best_val"], "best_epoch": loop["best_epoch"],
        "epochs_run": len(loop["history"]), "steps": step,
        "history": loop["history"],
        "train_seconds": loop["train_seconds"],
        "wall_seconds_this_process": time.time() - t0,
        "train_images_per_second": (
            step * config.batch_size / max(loop["train_seconds"], 1e-9)),
        "checkpoint": os.path.abspath(os.path.join(self.stage_dir, "checkpoints", "best")),
    }
    if self.method == "ctkd":
      res["final_temperature"] = float(losses.ctkd_temperature(
          state.params["temperature"], t_start=config.kd.t_start,
          t_end=config.kd.t_end))
    if self.primary:
      reporting.write_json(self.results_path, res)
    ckpt.close()
    writer.close()
    return res

  @staticmethod
  def _inference_vars(state):
    return _variables(state.params["student"], state.batch_stats)

  def _flush(self, writer, pending, step, progress):
    rows = jax.device_get(pending)
    first = step - len(rows) + 1
    if self.method == "ctkd":  # the learned temperature, every step
      for i, r in enumerate(rows):
        writer.write_scalars(first + i, {"temperature": r["temperature"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if self.method != "ctkd":
      mean.pop("temperature")
    rate = progress.update(step, mean["loss"])
    writer.write_scalars(step, {f"train_{k}": v for k, v in mean.items()} | {
        "steps_per_second": rate})
    progress.print(step, mean)


# -------------------------------------------------------------- top level


def _load_teacher(config, ds, mesh, path):
  """(frozen teacher module, its variables) from a kd_jax model checkpoint."""
  model = models.get_model(config.teacher.name, num_classes=ds.num_classes)
  like = models.init_shapes(config.teacher.name, ds.num_classes,
                            config.dataset.image_size)
  variables, _ = checkpointing.load_teacher(
      path, expected_model=config.teacher.name, num_classes=ds.num_classes,
      image_size=config.dataset.image_size, like_variables=like,
      sharding=sharding.replicated(mesh))
  return model, variables


def _check_workdir(workdir, config):
  """Refuses a workdir that holds a run of a different config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json())
  if old != new:
    old, new = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise UserError(f"workdir {workdir} holds a run of a different config "
                    f"(differs in {', '.join(diff[:5])}); use another --workdir")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config` in `workdir`; returns the run summary."""
  config_lib.validate(config)
  _check_workdir(workdir, config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "batch_size", mesh)
  sharding.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  ds = data.load(config)
  needs_teacher = config.kd.method != "none"
  teacher = None
  teacher_result = None
  if needs_teacher and config.teacher.checkpoint:
    teacher = _load_teacher(config, ds, mesh, config.teacher.checkpoint)
  # --- nothing above this line writes to the workdir ---
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    reporting.write_json(os.path.join(workdir, "config.json"),
                         json.loads(config.to_json()))
  reporting.log(f"data: {ds.describe()}; devices: {mesh.size} "
                f"({jax.default_backend()}, {jax.process_count()} process(es))")
  common = dict(ds=ds, mesh=mesh)
  if needs_teacher and teacher is None:
    teacher_result = Stage(
        config, role="teacher", model_name=config.teacher.name, method="none",
        stage_dir=os.path.join(workdir, "teacher"),
        num_epochs=config_lib.teacher_epochs(config),
        learning_rate=config_lib.teacher_lr(config), **common).run()
    teacher = _load_teacher(config, ds, mesh, os.path.join(workdir, "teacher"))
  elif needs_teacher:
    teacher_result = _evaluate_loaded_teacher(config, ds, mesh, teacher)

  rows = []
  if teacher_result is not None:
    rows.append(teacher_result)
  if config.scratch_baseline and needs_teacher:
    rows.append(Stage(config, role="scratch", model_name=config.student.name,
                      method="none", stage_dir=os.path.join(workdir, "scratch"),
                      num_epochs=config.num_epochs,
                      learning_rate=config.learning_rate, teacher=teacher,
                      **common).run())
  rows.append(Stage(config, role="student", model_name=config.student.name,
                    method=config.kd.method,
                    stage_dir=os.path.join(workdir, "student"),
                    num_epochs=config.num_epochs,
                    learning_rate=config.learning_rate, teacher=teacher,
                    **common).run())
  summary = reporting.summarize_run(config, ds, rows)
  if jax.process_index() == 0:
    reporting.write_json(os.path.join(workdir, "results.json"), summary)
  reporting.log("\n" + reporting.format_table(summary["rows"]))
  return summary


def _evaluate_loaded_teacher(config, ds, mesh, teacher):
  t_model, t_vars = teacher
  eval_jit = jax.jit(make_eval_step(config, t_model, None))
  test = evaluate(eval_jit, t_vars, None, ds.test, config, mesh, False)
  return {"role": "teacher", "model": config.teacher.name, "method": "loaded",
          "params": param_count(t_vars["params"]), "size_mb": size_mb(t_vars),
          "test": test, "checkpoint": os.path.abspath(config.teacher.checkpoint)}
