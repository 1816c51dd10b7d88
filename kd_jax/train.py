"""Training: teacher (cross-entropy), KD student, and scratch student.

`train_and_evaluate(config, workdir)` runs the stages a config asks for:
  teacher/  trained here with plain cross-entropy (subclass distillation:
            CE on grouped logits + the auxiliary loss) unless
            `config.teacher.checkpoint` names a trained one;
  assistant<i>_<model>/  teacher-assistant links (`config.kd.assistants`),
            each distilled from the previous link, whose checkpoint it loads;
  hint/     FitNets stage 1 (`config.kd.hint_stages=2`): the student trained
            up to its guided layer on the hint loss; stage 2 (student/)
            starts from this checkpoint;
  scratch/  the student without a teacher (`config.scratch_baseline`);
  student/  the student trained with `config.kd.method` (for deep mutual
            learning, the whole cohort is trained here together).
Each stage resumes from its latest checkpoint and is skipped when its
`results.json` exists. The run's summary lands in `workdir/results.json`.

The train step is one pure function under `jax.jit`, data-parallel over the
('data',) mesh (see sharding.py); the frozen teacher is an argument of the
step, run in inference mode, and never saved with the student.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import checkpointing, config_lib, data, kd_modules, losses
from kd_jax import metrics, models
from kd_jax import reporting, sharding, teacher_cache
from kd_jax.config_lib import UserError


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  # {'student': ...} plus, by method: 'temperature' (CTKD raw scalar or the
  # instance-wise MLP), 'adapter' (FitNets), 'peer<i>' (DML cohort).
  params: Any
  batch_stats: Any  # {'student': ..., 'peer<i>': ...}
  opt_state: Any


# --------------------------------------------------------------- optimizer


def make_optimizer(config, *, learning_rate, num_epochs, steps_per_epoch,
                   ctkd: bool, lambda_in_tx: bool = True):
  """Student optimizer (also for adapters and DML peers); with CTKD (global
  or instance-wise) a multi_transform whose 'temperature' part ascends the
  loss: update = +mu * lambda(epoch) * dL/dtheta_T (seeds' eq. 6).
  `lambda_in_tx=False` leaves lambda out (vmapped sweeps scale the
  temperature's gradient by a per-cell lambda before the update)."""
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
    schedule = ([optax.scale_by_schedule(
        lambda count: lam(count // steps_per_epoch))] if lambda_in_tx else [])
    transforms["temperature"] = optax.chain(
        optax.scale(-1.0),  # gradient reversal: the temperature maximises L
        *schedule,
        optax.sgd(kd.temperature_lr, momentum=kd.temperature_momentum or None))
  return optax.multi_transform(transforms, lambda params: {
      k: "temperature" if k == "temperature" else "student" for k in params})


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


class Frozen(NamedTuple):
  """A frozen model a stage learns from (teacher or assistant)."""
  model: Any
  variables: Any
  subclasses: int = 1  # logits per class (subclass distillation)
  path: str = ""  # the checkpoint it was loaded from


def class_logits(logits_BxK, subclasses: int):
  return (losses.subclass_to_class_logits(logits_BxK, subclasses)
          if subclasses > 1 else logits_BxK)


def method_loss(config, method, s_logits, t_logits, labels_B, *, epoch,
                temperature, alpha=None):
  """The logit-level loss of `method` (the trainer adds hints and DML).
  `alpha` overrides config.kd.alpha (a traced value in vmapped sweeps)."""
  kd = config.kd
  ls = kd.logit_standardization
  alpha = kd.alpha if alpha is None else alpha
  if method == "none":
    return losses.cross_entropy(s_logits, labels_B)
  if method == "subclass_teacher":
    return losses.subclass_teacher_loss(
        s_logits, labels_B, subclasses=kd.subclasses,
        aux_weight=kd.subclass_aux_weight,
        aux_temperature=kd.subclass_aux_temperature)
  if method == "conditional":
    return losses.conditional_kd_loss(s_logits, t_logits, labels_B,
                                      temperature=temperature,
                                      standardize_logits=ls)
  if method in ("vanilla", "ctkd", "ctkd_instance", "fitnets"):
    return losses.kd_loss(s_logits, t_logits, labels_B, temperature=temperature,
                          alpha=alpha, standardize_logits=ls)
  if method == "dkd":
    warm = (jnp.minimum(1.0, (epoch + 1.0) / kd.dkd_warmup_epochs)
            if kd.dkd_warmup_epochs else 1.0)
    return losses.cross_entropy(s_logits, labels_B) + warm * losses.dkd_loss(
        s_logits, t_logits, labels_B, temperature=temperature,
        alpha=kd.dkd_alpha, beta=kd.dkd_beta, standardize_logits=ls)
  if method == "dist":
    return losses.cross_entropy(s_logits, labels_B) + losses.dist_loss(
        s_logits, t_logits, temperature=temperature, beta=kd.dist_beta,
        gamma=kd.dist_gamma)
  if method == "subclass":
    return losses.subclass_kd_loss(s_logits, t_logits, labels_B,
                                   subclasses=kd.subclasses,
                                   temperature=temperature, alpha=alpha)
  if method == "hint":  # FitNets stage 1: the hint loss alone
    return jnp.float32(0.0)
  raise ValueError(f"no loss for method {method!r}")


def data_seed(config) -> int:
  """Seed of the data order and augmentation (config.data_seed, or seed)."""
  return config.data_seed if config.data_seed >= 0 else config.seed


def step_rngs(seed, step):
  """(augmentation key, dropout key) of one step; `seed` may be traced."""
  return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), step))


def make_train_step(config, student, method: str, tx, *, steps_per_epoch,
                    teacher: Frozen | None = None, subclasses=1, peers=(),
                    hint=None, adapter=None, temperature_module=None):
  """Returns the pure `train_step(state, batch, teacher_vars)`.

  Modules (student, teacher, DML `peers` [(key, module)], the FitNets
  `adapter`, the instance-wise CTKD `temperature_module`) and `tx` are static
  structure closed over; every array is an argument. `hint` is
  (student_layer, teacher_layer) or None.
  """
  kd = config.kd
  t_model = teacher.model if teacher is not None else None
  t_groups = teacher.subclasses if teacher is not None else 1

  def train_step(state: TrainState, batch, teacher_vars):
    images, labels_B, *cached = batch  # cached: [teacher logits] (cache on)
    aug_rng = step_rngs(data_seed(config), state.step)[0]
    dropout_rng = step_rngs(config.seed, state.step)[1]
    x = _preprocess(config, images, aug_rng)
    epoch = state.step // steps_per_epoch
    t_logits = t_feature = None
    if cached:
      t_logits = jax.lax.stop_gradient(cached[0])
      if hint:  # the cached hint feature (teacher_cache.py)
        t_feature = jax.lax.stop_gradient(cached[1])
    elif t_model is not None:
      if hint:
        t_logits, t_feats, _ = models.apply_with_features(
            t_model, teacher_vars, x, train=False)
        t_feature = jax.lax.stop_gradient(t_feats[hint[1]])
      elif config.mixed_precision:
        t_logits = _to_f32(t_model.apply(*_to_bf16((teacher_vars, x)),
                                         train=False))
      else:
        t_logits = t_model.apply(teacher_vars, x, train=False)
      t_logits = jax.lax.stop_gradient(t_logits)

    def forward(module, key, params, index=0):
      variables = _variables(params[key], state.batch_stats[key])
      rngs = {"dropout": (jax.random.fold_in(dropout_rng, index) if index
                          else dropout_rng)}
      inputs = x
      if config.mixed_precision:  # bf16 compute; f32 params, stats and loss
        variables, inputs = _to_bf16((variables, x))
      logits, feats, new = models.apply_with_features(
          module, variables, inputs, train=True, mutable=("batch_stats",),
          rngs=rngs)
      stats = new.get("batch_stats", {})
      if config.mixed_precision:
        logits, feats, stats = _to_f32((logits, feats, stats))
      return logits, feats, stats

    def loss_fn(params):
      s_logits, s_feats, bs = forward(student, "student", params)
      batch_stats = {"student": bs}
      aux = {}
      if method == "ctkd":
        temperature = losses.ctkd_temperature(
            params["temperature"], t_start=kd.t_start, t_end=kd.t_end)
      elif method == "ctkd_instance":
        temperature = temperature_module.apply(
            {"params": params["temperature"]}, t_logits, s_logits)
      elif method == "none":
        temperature = jnp.float32(1.0)
      else:
        temperature = jnp.float32(kd.temperature)
      if method == "dml":
        cohort = [s_logits]
        for i, (key, module) in enumerate(peers):
          p_logits, _, p_bs = forward(module, key, params, i + 1)
          cohort.append(p_logits)
          batch_stats[key] = p_bs
        member_losses = losses.mutual_learning_losses(
            jnp.stack(cohort), labels_B, temperature=temperature)
        loss = jnp.sum(member_losses)
        aux["peer_accuracy"] = jnp.mean(jnp.stack(
            [jnp.mean(jnp.argmax(z, -1) == labels_B) for z in cohort[1:]]))
      else:
        loss = method_loss(config, method, s_logits, t_logits, labels_B,
                           epoch=epoch, temperature=temperature)
      if hint:
        h = losses.hint_loss(
            adapter.apply({"params": params["adapter"]}, s_feats[hint[0]]), t_feature)
        aux["hint_loss"] = h
        loss = loss + (h if method == "hint" else kd.hint_weight * h)
      return loss, (s_logits, batch_stats, jnp.mean(temperature), aux)

    (loss, (logits, batch_stats, temperature, aux)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(state.params))
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    # One scalar for all the selects below, out of a `cond` that XLA cannot
    # fuse: otherwise it copies the and-chain over the leaves into every
    # select fusion (HLO quadratic in the number of leaves: a MobileNetV3
    # step's HLO 4x larger and its compilation ~2x slower).
    finite = jax.lax.cond(finite, lambda: jnp.bool_(True),
                          lambda: jnp.bool_(False))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    pred_B = jnp.argmax(class_logits(logits, subclasses), -1)
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean(pred_B == labels_B),
        "temperature": temperature,
        **aux,
    }
    if t_logits is not None:
      step_metrics["agreement"] = jnp.mean(
          pred_B == jnp.argmax(class_logits(t_logits, t_groups), -1))
    step_metrics["finite"] = finite.astype(jnp.float32)
    new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
    # A non-finite step changes nothing (nan_policy decides, on the host,
    # whether the run stops or goes on): the state stays the last good one.
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                             new_state, state).replace(step=state.step + 1)
    return new_state, step_metrics

  return train_step


def _to_bf16(tree):
  return jax.tree.map(lambda a: a.astype(jnp.bfloat16)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _to_f32(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float32)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_eval_step(config, model, teacher: Frozen | None, subclasses=1):
  """Evaluation in float32; `cached` is the teacher's cached logits."""
  def eval_step(variables, teacher_vars, images, labels_B, mask_B, *cached):
    x = _preprocess(config, images)
    logits_BxC = class_logits(model.apply(variables, x, train=False), subclasses)
    if teacher is not None:
      t_raw = (cached[0] if cached else
               teacher.model.apply(teacher_vars, x, train=False))
      t_logits = class_logits(t_raw, teacher.subclasses)
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
  for batch in data.eval_batches(
      split, global_batch=config.eval_batch_size,
      image_size=config.dataset.image_size,
      process_index=jax.process_index(), process_count=jax.process_count()):
    batch = sharding.global_batch(batch, mesh)
    m = eval_step_jit(variables, teacher_vars, *batch)
    acc = m if acc is None else acc.merge(m)
  return metrics.summarize(jax.device_get(acc), has_teacher)


# ------------------------------------------------------------------ stage


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def size_mb(variables, bytes_per_value=4) -> float:
  """Saved inference variables (params + BN stats), float32, in MB (1e6 B)."""
  return param_count(variables) * bytes_per_value / 1e6


_INITS = {}  # (model, image size, mesh) -> jitted init: compiled once per process


def make_init(model, config, mesh):
  """`rng -> (params, batch_stats)`, compiled once per model, image size and
  mesh in a process: a sweep's cells (and a study's in-process cells) share
  one compilation (compiling a mobile net's init takes 5-10 s on a CPU)."""
  key = (repr(model), config.dataset.image_size, mesh)
  fn = _INITS.get(key)
  if fn is None:
    size = config.dataset.image_size
    fn = _INITS[key] = jax.jit(lambda r: models.init(model, r, size),
                               out_shardings=sharding.replicated(mesh))

  def init(rng):
    variables = fn(rng)
    return variables["params"], variables.get("batch_stats", {})
  return init


def init_variables(model, config, mesh, rng):
  return make_init(model, config, mesh)(rng)


class Stage:
  """One training run of one model (teacher, assistant, hint stage, KD
  student, scratch student, or a DML cohort led by the student)."""

  def __init__(self, config, *, role, model_name, method, stage_dir,
               num_epochs, learning_rate, ds, mesh, teacher: Frozen | None = None,
               subclasses=1, init_from="", select_best=True, peers=(),
               hint=None):
    self.config, self.role, self.method = config, role, method
    self.model_name, self.stage_dir = model_name, stage_dir
    self.num_epochs, self.learning_rate = num_epochs, learning_rate
    self.ds, self.mesh = ds, mesh
    self.teacher = teacher
    self.teacher_vars = teacher.variables if teacher is not None else None
    self.subclasses = subclasses
    self.init_from = init_from  # a model checkpoint the student starts from
    self.select_best = select_best  # False: keep the last epoch, no early stop
    self.hint = hint
    self.model = models.get_model(model_name,
                                  num_classes=ds.num_classes * subclasses)
    # DML cohort: [(params key, model name, module)]
    self.peers = [(f"peer{i + 1}", name,
                   models.get_model(name, num_classes=ds.num_classes))
                  for i, name in enumerate(peers)]
    self.primary = jax.process_index() == 0
    self.last_train_metrics = {}
    self.cache_used = False
    self.skipped_steps = 0
    self.spe = data.steps_per_epoch(len(ds.train), config.batch_size,
                                    config.max_steps_per_epoch)
    self.adapter = self.temperature_module = None
    if hint:
      self.adapter = kd_modules.HintAdapter(
          hint_shapes(config, ds.num_classes)[1][-1])
    if method == "ctkd_instance":
      k = config.kd
      self.temperature_module = kd_modules.InstanceTemperature(
          hidden=k.temperature_hidden, t_start=k.t_start, t_end=k.t_end)

  def init_state(self):
    """(optimizer, initial TrainState): fresh weights, or the weights of
    `init_from` (FitNets stage 2 starts from stage 1's student)."""
    config, mesh = self.config, self.mesh
    tx = make_optimizer(config, learning_rate=self.learning_rate,
                        num_epochs=self.num_epochs, steps_per_epoch=self.spe,
                        ctkd=self.method in ("ctkd", "ctkd_instance"))
    # Scratch and KD students start from the same initial weights (a paired
    # comparison: only the teacher's signal differs).
    rng = jax.random.PRNGKey(config.seed)
    role_key = {"teacher": 1, "student": 2, "scratch": 2, "hint": 2}.get(
        self.role, 3)
    rng = jax.random.fold_in(rng, role_key)
    if self.init_from:
      like = models.init_shapes(self.model_name, self.ds.num_classes,
                                config.dataset.image_size)
      init_vars, _ = checkpointing.load_teacher(
          self.init_from, expected_model=self.model_name,
          num_classes=self.ds.num_classes, image_size=config.dataset.image_size,
          like_variables=like, sharding=sharding.replicated(mesh))
      student_params = init_vars["params"]
      student_stats = init_vars.get("batch_stats", {})
    else:
      student_params, student_stats = init_variables(self.model, config, mesh,
                                                     rng)
    params = {"student": student_params}
    batch_stats = {"student": student_stats}
    for i, (key, _, module) in enumerate(self.peers):
      params[key], batch_stats[key] = init_variables(
          module, config, mesh, jax.random.fold_in(rng, 100 + i))
    c = self.ds.num_classes * self.subclasses
    if self.method == "ctkd":
      params["temperature"] = jnp.float32(config.kd.init_raw)
    elif self.method == "ctkd_instance":
      z = jnp.zeros((1, c), jnp.float32)
      params["temperature"] = jax.jit(
          lambda r: self.temperature_module.init(r, z, z)["params"],
          out_shardings=sharding.replicated(mesh))(jax.random.fold_in(rng, 7))
    if self.adapter is not None:
      s_shape = hint_shapes(config, self.ds.num_classes)[0]
      f = jnp.zeros((1,) + s_shape[1:], jnp.float32)
      params["adapter"] = jax.jit(
          lambda r: self.adapter.init(r, f)["params"],
          out_shardings=sharding.replicated(mesh))(jax.random.fold_in(rng, 8))
    state = jax.jit(lambda p, b: TrainState(jnp.int32(0), p, b, tx.init(p)),
                    out_shardings=sharding.replicated(mesh))(params, batch_stats)
    return tx, state

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

  def _with_teacher_cache(self):
    """The dataset, with the teacher's cached logits attached when usable."""
    ok, why = teacher_cache.usable(self.config)
    if self.teacher is None or not ok:
      if self.teacher is not None and self.config.teacher.cache_dir:
        reporting.log(f"[{self.role}] teacher cache not used: {why}")
      return self.ds
    logits = teacher_cache.load_or_compute(
        self.config, self.ds, type(self.teacher.model).__name__, self.teacher,
        self.mesh)
    self.cache_used = True
    ds = dataclasses.replace(self.ds, **{
        name: dataclasses.replace(getattr(self.ds, name),
                                  teacher_logits=logits[name])
        for name in teacher_cache.SPLITS})
    if self.hint:  # training batches also carry the teacher's hint feature
      feats = teacher_cache.load_or_compute_features(
          self.config, self.ds, type(self.teacher.model).__name__, self.teacher,
          self.mesh, self.hint[1])
      ds = dataclasses.replace(ds, train=dataclasses.replace(
          ds.train, teacher_features=feats))
    return ds

  def _train(self) -> dict:
    config, mesh = self.config, self.mesh
    t0 = time.time()
    os.makedirs(self.stage_dir, exist_ok=True)
    ds = self._with_teacher_cache()
    spe = self.spe
    tx, state = self.init_state()
    repl = sharding.replicated(mesh)

    ckpt = checkpointing.StageCheckpoints(self.stage_dir)
    loop = {"epoch": 0, "step_in_epoch": 0, "best_val": -1.0, "best_epoch": -1,
            "bad_epochs": 0, "history": [], "train_seconds": 0.0}
    restored = ckpt.restore_latest(state, repl)
    if restored is not None:
      state, loop = restored
      reporting.log(f"[{self.role}] resumed from step {int(state.step)} "
                    f"(epoch {loop['epoch'] + 1}, batch {loop['step_in_epoch']})")

    train_step = make_train_step(
        config, self.model, self.method, tx, steps_per_epoch=spe,
        teacher=self.teacher, subclasses=self.subclasses,
        peers=[(k, m) for k, _, m in self.peers], hint=self.hint,
        adapter=self.adapter, temperature_module=self.temperature_module)
    bsh = sharding.batch_sharding(mesh)
    step_jit = jax.jit(train_step, in_shardings=(repl, bsh, repl),
                       out_shardings=(repl, repl), donate_argnums=0)
    eval_jit = jax.jit(make_eval_step(config, self.model, self.teacher,
                                      self.subclasses))
    writer = metrics.create_writer(os.path.join(self.stage_dir, "logs"),
                                   self.primary)
    has_teacher = self.teacher is not None
    total_steps = self.num_epochs * spe
    # The step on the host: reading state.step would wait for the device
    # every step and stop the host from preparing the next batches.
    step = int(state.step)
    progress = reporting.Progress(self.role, self.model_name, total_steps,
                                  step, spe)
    stop = False

    def meta():
      return {**loop, "model": self.model_name, "role": self.role,
              "num_classes": ds.num_classes, "subclasses": self.subclasses,
              "image_size": config.dataset.image_size,
              "dataset": ds.name, "class_names": list(ds.class_names)}

    while loop["epoch"] < self.num_epochs and not stop:
      epoch = loop["epoch"]
      pending = []
      batches = data.train_batches(
          ds.train, global_batch=config.batch_size, seed=data_seed(config),
          epoch=epoch, num_steps=spe, start_step=loop["step_in_epoch"],
          image_size=config.dataset.image_size,
          process_index=jax.process_index(), process_count=jax.process_count())
      t_epoch = time.time()
      for host_batch in batches:  # (images, labels[, cached teacher logits])
        batch = sharding.global_batch(host_batch, mesh)
        state, step_metrics = step_jit(state, batch, self.teacher_vars)
        pending.append(step_metrics)
        loop["step_in_epoch"] += 1
        step += 1
        if len(pending) >= config.log_every_steps:
          self._flush(writer, pending, step, progress, ckpt)
          pending = []
        if _preempted(step, config.log_every_steps):
          loop["train_seconds"] += time.time() - t_epoch
          if pending:
            self._flush(writer, pending, step, progress, ckpt)
          ckpt.save_latest(step, state, meta())
          ckpt.wait()
          writer.flush()
          raise Preempted(
              f"[{self.role}] SIGTERM: saved a checkpoint at step {step} in "
              f"{self.stage_dir}/checkpoints/latest; rerun the same command "
              "to resume")
        if (loop["step_in_epoch"] < spe and config.checkpoint_every_steps and
            step % config.checkpoint_every_steps == 0):
          loop["train_seconds"] += time.time() - t_epoch
          t_epoch = time.time()
          ckpt.save_latest(step, state, meta())
      if pending:
        self._flush(writer, pending, step, progress, ckpt)
      loop["train_seconds"] += time.time() - t_epoch

      val = evaluate(eval_jit, self._inference_vars(state), self.teacher_vars,
                     ds.val, config, mesh, has_teacher)
      writer.write_scalars(step, {
          f"val_{k}": v for k, v in val.items() if k != "confusion"} | {
              "epoch": epoch + 1})
      loop["history"].append({"epoch": epoch + 1, "step": step,
                              **{k: v for k, v in val.items() if k != "confusion"}})
      # A hint stage (FitNets stage 1) has no trained head: keep its last
      # epoch instead of selecting on validation accuracy.
      improved = (val["accuracy"] > loop["best_val"]
                  if self.select_best else True)
      if improved:
        loop.update(best_val=val["accuracy"], best_epoch=epoch + 1, bad_epochs=0)
      else:
        loop["bad_epochs"] += 1
      loop.update(epoch=epoch + 1, step_in_epoch=0)
      reporting.log(f"[{self.role} {self.model_name}] epoch {epoch + 1}/"
                    f"{self.num_epochs}: val acc {val['accuracy']:.4f} "
                    f"macro-F1 {val['macro_f1']:.4f}"
                    + (" (best)" if improved else ""))
      patience = config.early_stopping_patience if self.select_best else 0
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
    if self.teacher is not None:
      res["teacher_checkpoint"] = self.teacher.path
    if self.init_from:
      res["init_from"] = os.path.abspath(self.init_from)
    res["teacher_cache"] = self.cache_used
    res["skipped_nonfinite_steps"] = self.skipped_steps
    if self.method == "ctkd":
      res["final_temperature"] = float(losses.ctkd_temperature(
          state.params["temperature"], t_start=config.kd.t_start,
          t_end=config.kd.t_end))
    if self.last_train_metrics:
      res["final_train_metrics"] = self.last_train_metrics
    if self.peers:  # DML: every cohort member, from the final state
      res["cohort"] = [{"model": self.model_name, "test": test}]
      for key, name, module in self.peers:
        peer_vars = _variables(state.params[key], state.batch_stats[key])
        peer_test = evaluate(jax.jit(make_eval_step(config, module, None)),
                             peer_vars, None, ds.test, config, mesh, False)
        res["cohort"].append({
            "model": name, "test": peer_test, "source": "final state",
            "params": param_count(peer_vars["params"]),
            "size_mb": size_mb(peer_vars)})
    if self.primary:
      reporting.write_json(self.results_path, res)
    ckpt.close()
    writer.close()
    return res

  @staticmethod
  def _inference_vars(state):
    return _variables(state.params["student"], state.batch_stats["student"])

  def _flush(self, writer, pending, step, progress, ckpt):
    rows = jax.device_get(pending)
    first = step - len(rows) + 1
    bad = [first + i for i, r in enumerate(rows) if not r["finite"]]
    rows = [{k: v for k, v in r.items() if k != "finite"} for r in rows]
    if bad and self.config.nan_policy == "stop":
      good = ckpt.latest.latest_step()
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
    learned_t = self.method in ("ctkd", "ctkd_instance")
    if learned_t:  # the learned temperature (batch mean), every step
      for i, r in enumerate(rows):
        writer.write_scalars(first + i, {"temperature": r["temperature"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if not learned_t:
      mean.pop("temperature")
    self.last_train_metrics = mean
    rate = progress.update(step, mean["loss"])
    writer.write_scalars(step, {f"train_{k}": v for k, v in mean.items()} | {
        "steps_per_second": rate})
    progress.print(step, mean)


# ------------------------------------------------------------ preemption


class Preempted(Exception):
  """SIGTERM arrived; the stage saved its latest checkpoint."""


_SIGTERM = {"received": False}


def _on_sigterm(signum, frame):
  del signum, frame
  _SIGTERM["received"] = True


def install_sigterm_handler():
  """SLURM sends SIGTERM before it kills a job: finish the step, save, exit."""
  import signal
  try:
    signal.signal(signal.SIGTERM, _on_sigterm)
  except ValueError:  # not the main thread: leave the default handler
    pass


def _preempted(step, every) -> bool:
  """Whether to stop now. Several processes must agree (they save
  together), so they compare flags every `every` steps."""
  if jax.process_count() == 1:
    return _SIGTERM["received"]
  if step % max(1, every):
    return False
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(
      np.asarray([_SIGTERM["received"]], np.int32))
  return bool(np.any(flags))


# -------------------------------------------------------------- top level


def hint_shapes(config, num_classes):
  """Shapes of the student's guided and the teacher's hint feature, checked:
  both names must exist and the spatial sizes must agree (the 1x1 adapter
  only maps channels)."""
  k, size = config.kd, config.dataset.image_size

  def feature_shape(name, layer, what):
    feats = models.feature_shapes(name, num_classes, size)
    if layer not in feats:
      raise UserError(f"config.kd.{what}={layer!r} is not a feature of "
                      f"{name}; allowed: {', '.join(feats)}")
    return feats[layer]

  s_shape = feature_shape(config.student.name, k.hint_student_layer,
                          "hint_student_layer")
  t_shape = feature_shape(config.teacher.name, k.hint_teacher_layer,
                          "hint_teacher_layer")
  if len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
    raise UserError(
        f"hint layers do not match in spatial size at {size}px: student "
        f"{config.student.name}.{k.hint_student_layer} is "
        f"{'x'.join(map(str, s_shape[1:]))}, teacher {config.teacher.name}."
        f"{k.hint_teacher_layer} is {'x'.join(map(str, t_shape[1:]))} "
        "(pick layers with equal height and width)")
  return s_shape, t_shape


def _load_teacher(config, ds, mesh, path, name=None, subclasses=1) -> Frozen:
  """A frozen model (teacher or assistant) from a kd_jax model checkpoint."""
  name = name or config.teacher.name
  outputs = ds.num_classes * subclasses
  model = models.get_model(name, num_classes=outputs)
  like = models.init_shapes(name, outputs, config.dataset.image_size)
  variables, _ = checkpointing.load_teacher(
      path, expected_model=name, num_classes=ds.num_classes,
      image_size=config.dataset.image_size, like_variables=like,
      sharding=sharding.replicated(mesh), subclasses=subclasses)
  return Frozen(model, variables, subclasses,
                checkpointing.resolve_model_dir(path))


def _check_workdir(workdir, config, overwrite=False):
  """Refuses a workdir that holds a run of a different config (with
  `overwrite`, moves that run aside to `<workdir>.old-<time>`: nothing is
  deleted)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json())
  if old != new:
    old, new = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if overwrite:
      aside = f"{os.path.normpath(workdir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
      if jax.process_index() == 0:
        os.rename(workdir, aside)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("kd_jax_overwrite")
      reporting.log(f"--overwrite: moved the previous run to {aside}")
      return
    raise UserError(f"workdir {workdir} holds a run of a different config "
                    f"(differs in {', '.join(diff[:5])}); use another "
                    "--workdir, or --overwrite to move that run aside")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict:
  """Runs every stage of `config` in `workdir`; returns the run summary."""
  config_lib.validate(config)
  install_sigterm_handler()
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "batch_size", mesh)
  sharding.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  ds = data.load(config)
  kd = config.kd
  needs_teacher = kd.method in losses.TEACHER_METHODS
  groups = config_lib.subclasses(config)
  hints = config_lib.hints_enabled(config)
  if hints:
    hint_shapes(config, ds.num_classes)  # a bad layer pair fails here
  teacher = None
  teacher_result = None
  if needs_teacher and config.teacher.checkpoint:
    teacher = _load_teacher(config, ds, mesh, config.teacher.checkpoint,
                            subclasses=groups)
  _check_workdir(workdir, config, overwrite)
  # --- nothing above this line writes to the workdir ---
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    reporting.write_json(os.path.join(workdir, "config.json"),
                         json.loads(config.to_json()))
  reporting.log(f"data: {ds.describe()}; devices: {mesh.size} "
                f"({jax.default_backend()}, {jax.process_count()} process(es))")
  common = dict(ds=ds, mesh=mesh)
  student_run = dict(num_epochs=config.num_epochs,
                     learning_rate=config.learning_rate, **common)
  if needs_teacher and teacher is None:
    teacher_result = Stage(
        config, role="teacher", model_name=config.teacher.name,
        method="subclass_teacher" if groups > 1 else "none",
        stage_dir=os.path.join(workdir, "teacher"), subclasses=groups,
        num_epochs=config_lib.teacher_epochs(config),
        learning_rate=config_lib.teacher_lr(config), **common).run()
    teacher = _load_teacher(config, ds, mesh, os.path.join(workdir, "teacher"),
                            subclasses=groups)
  elif needs_teacher:
    teacher_result = _evaluate_loaded_teacher(config, ds, mesh, teacher)

  rows = []
  if teacher_result is not None:
    rows.append(teacher_result)
  # Teacher assistants: each link is a distillation run whose best
  # checkpoint is the next link's teacher.
  for i, name in enumerate(config_lib.model_list(kd.assistants)):
    link_dir = os.path.join(workdir, f"assistant{i + 1}_{name}")
    rows.append(Stage(config, role=f"assistant{i + 1}", model_name=name,
                      method=kd.method, stage_dir=link_dir, teacher=teacher,
                      subclasses=groups, **student_run).run())
    teacher = _load_teacher(config, ds, mesh, link_dir, name=name,
                            subclasses=groups)
  hint = (kd.hint_student_layer, kd.hint_teacher_layer) if hints else None
  init_from = ""
  if hints and kd.hint_stages == 2:
    hint_dir = os.path.join(workdir, "hint")
    rows.append(Stage(config, role="hint", model_name=config.student.name,
                      method="hint", stage_dir=hint_dir, teacher=teacher,
                      hint=hint, select_best=False,
                      num_epochs=config_lib.hint_epochs(config),
                      learning_rate=config.learning_rate, **common).run())
    init_from, hint = hint_dir, None  # stage 2: KD from the hint weights
  if config.scratch_baseline and (needs_teacher or kd.method == "dml"):
    rows.append(Stage(config, role="scratch", model_name=config.student.name,
                      method="none", stage_dir=os.path.join(workdir, "scratch"),
                      teacher=teacher, **student_run).run())
  rows.append(Stage(config, role="student", model_name=config.student.name,
                    method=kd.method, stage_dir=os.path.join(workdir, "student"),
                    teacher=teacher, subclasses=groups, init_from=init_from,
                    hint=hint, peers=config_lib.peers(config),
                    **student_run).run())
  summary = reporting.summarize_run(config, ds, rows)
  if jax.process_index() == 0:
    reporting.write_json(os.path.join(workdir, "results.json"), summary)
  reporting.log("\n" + reporting.format_table(summary["rows"]))
  return summary


def _evaluate_loaded_teacher(config, ds, mesh, teacher):
  t_model, t_vars = teacher.model, teacher.variables
  eval_jit = jax.jit(make_eval_step(config, t_model, None, teacher.subclasses))
  test = evaluate(eval_jit, t_vars, None, ds.test, config, mesh, False)
  return {"role": "teacher", "model": config.teacher.name, "method": "loaded",
          "params": param_count(t_vars["params"]), "size_mb": size_mb(t_vars),
          "test": test, "checkpoint": os.path.abspath(config.teacher.checkpoint)}
