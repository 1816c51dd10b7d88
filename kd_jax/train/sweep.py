"""Vectorised sweeps: K cells that share a student architecture and data,
trained by `jax.vmap` of the same train step a single run jits.

The cells of a group may differ only in `VMAP_FIELDS` (temperature, alpha,
CTKD lambda schedule, seed, cross-entropy class weights): exactly the step's
hyperparameter arrays (step.hyperparams). Their train states and
hyperparameters are stacked on a leading K axis and one
`jax.vmap(train_step)` updates them all (on CPU by default one cell per
call of the same compiled program: see `vmap_chunk`);
the input pipeline and the teacher's logits (cached, or one forward pass per
step) are shared by all cells. The data order and augmentation follow the
group's `data_seed` (a cell's own `seed` sets its initial weights and
dropout), and each cell's config is written with that `data_seed`, so
rerunning a cell on its own reproduces it. Each cell gets the same files as
a separate run: `<workdir>/config.json`, `results.json`, and
`student/{results.json, checkpoints/{latest,best}, logs/}`; a finished cell
is skipped and an interrupted group resumes from its cells' latest
checkpoints. The per-cell bookkeeping is stage.py's `Tracker`.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import config_lib
from kd_jax import models
from kd_jax import reporting
from kd_jax.data import datasets as data
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import evaluate as evaluate_lib
from kd_jax.train import loop as loop_lib
from kd_jax.train import model_init
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import stage as stage_lib
from kd_jax.train import step as step_lib
from kd_jax.train import teacher_cache

VMAP_FIELDS = ("kd.temperature", "kd.alpha", "kd.schedule", "seed",
               "loss.class_weights") + tuple(
                   "kd." + n for n in methods.SWEEP_FIELDS)


def vmap_problem(config) -> str | None:
  """Why a cell cannot be trained in a vmapped group, or None: the one rule
  sweeps and studies share."""
  method = methods.get(config.kd.method)
  if method.feature is not None:
    return (f"feature method {config.kd.method!r} trains cell by cell: each "
            "cell reads the live teacher's feature maps and trains its own "
            "feature modules (CRD: its own memory banks)")
  if not method.vmappable:
    allowed = ", ".join(methods.VMAPPABLE)
    return f"method {config.kd.method!r} cannot be vmapped; allowed: {allowed}"
  if config.kd.hint_student_layer or config.kd.assistants:
    return "hint layers and teacher assistants cannot be vmapped"
  if config.teacher.logits:
    return "a teacher logits file (config.teacher.logits) is used cell by cell"
  if config.scratch_baseline:
    return ("a vmapped group trains students only: set "
            "config.scratch_baseline=False (scratch cells are method=none cells)")
  return None


def group_key(config) -> str:
  """Cells with equal keys can share one vmapped program."""
  flat = config_lib.flatten(json.loads(config.to_json()))
  for k in VMAP_FIELDS:
    flat.pop(k, None)
  flat["data_seed"] = (config_lib.data_seed(config) if config.data_seed >= 0
                       else None)
  return json.dumps(flat, sort_keys=True)


def check_group(configs):
  c0 = configs[0]
  problem = vmap_problem(c0)
  if problem:
    raise UserError(problem)
  if methods.get(c0.kd.method).teacher and not c0.teacher.checkpoint:
    raise UserError("a vmapped group distils from a trained teacher: set "
                    "config.teacher.checkpoint (studies do this)")
  if len({group_key(c) for c in configs}) > 1:
    raise UserError("the cells of a vmapped group may differ only in "
                    f"{', '.join(VMAP_FIELDS)}")


def vmap_chunk(chunk: int, k_cells: int) -> int:
  """Cells per vmap call: `chunk`, or (0: auto) all of them on GPU/TPU and
  one at a time on CPU, where a vmapped convolution becomes a grouped
  convolution that XLA:CPU runs far slower than K separate ones."""
  if chunk:  # >= 1 (train_group refuses a negative one)
    return min(chunk, k_cells)
  return k_cells if jax.default_backend() != "cpu" else 1


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _slice(tree, k):
  """Cell `k` of a stacked tree (one dispatch, not one per leaf)."""
  return jax.tree.map(lambda a: a[k], tree)


def make_sweep_step(spec: step_lib.StepSpec, tx):
  """`step(states_K, hp_K, active_K, batch, teacher_vars)`: the train step
  under `jax.vmap`. A cell stopped early (`active` False) keeps its state."""
  one = jax.vmap(step_lib.make_train_step(spec, tx),
                 in_axes=(0, None, 0, None))

  def sweep_step(states, hp, active, batch, teacher_vars):
    new, m = one(states, batch, hp, teacher_vars)
    keep = lambda n, o: jnp.where(
        active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(keep, new, states), m
  return sweep_step


def train_group(configs, workdirs, *, vmap_chunk: int = 0) -> list[dict]:
  """Trains the cells `configs` (one per `workdirs`) as one vmapped program;
  returns each cell's run summary (the same as `train_and_evaluate`'s).
  `vmap_chunk`: cells per vmap call (0: auto, see `vmap_chunk`)."""
  if vmap_chunk < 0:
    raise UserError(f"vmap_chunk={vmap_chunk} must be >= 0 (0: auto)")
  for c in configs:
    config_lib.validate(c)
  check_group(configs)
  dseed = config_lib.data_seed(configs[0])
  configs = [c.copy_and_resolve_references() for c in configs]
  for c in configs:
    c.data_seed = dseed  # the group's data order, recorded in each cell
  done = [w for w in workdirs if os.path.exists(os.path.join(w, "results.json"))]
  todo = [(c, w) for c, w in zip(configs, workdirs) if w not in done]
  done = [_read_json(os.path.join(w, "results.json")) for w in done]
  if not todo:
    reporting.log(f"sweep: all {len(configs)} cells already finished")
    return done
  stored = [train.check_workdir(w, c) for c, w in todo]
  config = todo[0][0]
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "batch_size", mesh)
  sharding.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  ds = data.load(config)
  specs = [train.as_written(config_lib.read_specs(c), old)  # read once
           for (c, _), old in zip(todo, stored)]
  teacher = teacher_result = None
  if methods.get(config.kd.method).teacher:
    teacher = train.load_frozen(specs[0], ds, mesh, config.teacher.checkpoint)
    teacher_result = train.evaluate_loaded_teacher(specs[0], ds, mesh, teacher)
  for s, (_, w) in zip(specs, todo):
    checkpointing.check_resumable(w, s, ds)
  for (c, w), old in zip(todo, stored):
    os.makedirs(w, exist_ok=True)
    if jax.process_index() == 0 and old is None:
      reporting.write_json(os.path.join(w, "config.json"), config_lib.as_json(c))
  reporting.log(f"sweep: {len(todo)} cells of {config.student.name} "
                f"({config.kd.method}) in one vmapped program; data: "
                f"{ds.describe()}")
  rows = _train_cells([(s, w) for s, (_, w) in zip(specs, todo)],
                      config.student.name,
                      data.stage_data(ds, "student",
                                      specs[0].data.transfer_limit),
                      mesh, teacher, vmap_chunk)
  out = []
  skipped = data.skipped_summary(ds)
  for (c, w), student in zip(todo, rows):
    stages = [teacher_result, student] if teacher_result else [student]
    summary = reporting.summarize_run(config_lib.as_json(c), ds, stages)
    summary |= skipped
    if jax.process_index() == 0:
      reporting.write_json(os.path.join(w, "results.json"), summary)
    out.append(summary)
  return done + out


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _init_cells(todo, student, model, ds, mesh, tx):
  """Each cell's tracker and initial (or resumed) state: the same weights a
  separate run starts from; init compiled once for all cells."""
  init = model_init.make_init(model, todo[0][0].data.image_size, mesh)
  init_state = jax.jit(lambda p, b: step_lib.new_train_state(
      tx, p, {"student": b}), out_shardings=sharding.replicated(mesh))
  learned = methods.get(todo[0][0].loss.method).temperature == "learned"
  trackers, states = [], []
  for spec, w in todo:
    params, stats = init(model_init.init_rng(spec.run.seed, "student"))
    params = {"student": params}
    if learned:
      params["temperature"] = jnp.float32(spec.kd.init_raw)
    state = init_state(params, stats)
    tr = stage_lib.Tracker(
        spec, ds, role="student", model_name=student, method=spec.loss.method,
        stage_dir=os.path.join(w, "student"),
        fingerprint_=checkpointing.fingerprint(spec, ds, "student", student))
    restored = tr.restore(state, sharding.replicated(mesh))
    trackers.append(tr)
    states.append(state if restored is None else restored)
  positions = {(t.loop["epoch"], t.loop["step_in_epoch"]) for t in trackers}
  if len(positions) > 1:
    raise UserError("the cells of this vmapped group were saved at different "
                    "steps; run them separately")
  return trackers, states


class _Cells:
  """A group's stacked train states in chunks of `cs` cells (one vmapped
  call per chunk and step), with each cell's tracker: the K-stacked
  stepper of `loop.run_epochs`."""

  def __init__(self, trackers, states, hp, cs, step_fn):
    self.trackers, self.cs, self.step_fn = trackers, cs, step_fn
    self.starts = range(0, len(trackers), cs)
    self.chunks = [_stack(states[i:i + cs]) for i in self.starts]
    self.hp = [jax.tree.map(lambda a, i=i: a[i:i + cs], hp) for i in self.starts]
    self.loop = trackers[0].loop  # every cell is at the same position
    self.teacher_vars = self.teacher_fn = self.mesh = None
    self.progress = self.evaluate = self.recalibrate = None
    self.best = {}  # cell -> inference variables of its best epoch
    self.title, self.num_epochs = "", 0

  def attach(self, *, mesh, teacher_vars, teacher_fn, evaluate, progress,
             title, num_epochs, recalibrate=None):
    """What the loop's steps and epoch ends need beside the states."""
    self.mesh, self.teacher_vars, self.teacher_fn = mesh, teacher_vars, teacher_fn
    self.evaluate, self.progress = evaluate, progress
    self.recalibrate = recalibrate  # precise BN before evaluation, or None
    self.title, self.num_epochs = title, num_epochs

  def cell(self, k):
    return _slice(self.chunks[k // self.cs], k % self.cs)

  def finished(self, num_epochs) -> bool:
    return (self.loop["epoch"] >= num_epochs
            or all(t.loop["stopped"] for t in self.trackers))

  def begin_epoch(self):
    pass

  def put(self, host_batch):
    return sharding.global_batch(host_batch, self.mesh)

  def step(self, batch, step):
    """One train step of every cell; returns the [K] metrics."""
    if self.teacher_fn is not None:  # once per step, not once per chunk
      batch["teacher_logits"] = self.teacher_fn(self.teacher_vars,
                                                batch["image"], jnp.int32(step))
    active = jnp.asarray([not t.loop["stopped"] for t in self.trackers])
    out = [self.step_fn(ch, h, active[i:i + self.cs], batch, self.teacher_vars)
           for ch, h, i in zip(self.chunks, self.hp, self.starts)]
    self.chunks = [o[0] for o in out]
    for tr in self.trackers:
      tr.loop["step_in_epoch"] += 1
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *[o[1] for o in out])

  def save_latest(self, step):
    for k, tr in enumerate(self.trackers):
      tr.save_latest(step, self.cell(k))

  def wait(self):
    for tr in self.trackers:
      tr.ckpt.wait()
      tr.writer.flush()

  def preempted_message(self, step) -> str:
    return (f"[sweep] SIGTERM: saved every cell's checkpoint at step {step}; "
            "rerun the same command to resume")

  def add_seconds(self, seconds):
    for tr in self.trackers:
      if not tr.loop["stopped"]:
        tr.loop["train_seconds"] += seconds / len(self.trackers)

  def flush(self, pending, step):
    rows = jax.device_get(pending)  # [n steps] of {name: [K]}
    means = [tr.flush([{n: v[k] for n, v in r.items()} for r in rows], step)
             for k, tr in enumerate(self.trackers) if not tr.loop["stopped"]]
    mean = {n: float(np.mean([m[n] for m in means])) for n in means[0]}
    self.progress.update(step, mean["loss"])
    self.progress.print(step, mean)

  def end_epoch(self, step):
    """Validation, early stopping and checkpoints of every cell; keeps the
    inference variables of the cells whose epoch was their best."""
    for k, tr in enumerate(self.trackers):
      state = self.cell(k)
      if tr.loop["stopped"]:
        tr.loop.update(epoch=tr.loop["epoch"] + 1, step_in_epoch=0)
        tr.save_latest(step, state)
        continue
      variables = model_init.inference_variables(state)
      if self.recalibrate is not None:
        variables = self.recalibrate(variables)
      tr.end_epoch(step, self.evaluate(variables, k), state, variables)
      if tr.improved:
        self.best[k] = variables
    reporting.log(f"[{self.title}] epoch {self.loop['epoch']}/"
                  f"{self.num_epochs}: val acc " + " ".join(
                      f"{t.loop['history'][-1]['accuracy']:.4f}"
                      for t in self.trackers))


def _setup(todo, student, ds, mesh, teacher, chunk):
  """(step spec, cells, dataset with the cached teacher logits, cache used,
  steps per epoch) of a group: `todo` is [(specs, workdir)] of its cells."""
  specs = [s for s, _ in todo]
  s0, method = specs[0], specs[0].loss.method
  model = models.get_model(student, num_classes=ds.num_classes)
  spe = data.steps_per_epoch(len(ds.train), s0.data.batch_size,
                             s0.run.max_steps_per_epoch)
  tx = step_lib.make_optimizer(
      s0.optimizer, s0.kd, learning_rate=s0.optimizer.learning_rate,
      num_epochs=s0.run.num_epochs, steps_per_epoch=spe,
      ctkd=methods.get(method).learns_temperature)
  ds, cache_used = stage_lib.with_teacher_cache(s0, ds, teacher, mesh, "sweep")
  spec = step_lib.make_spec(s0, model, method, steps_per_epoch=spe,
                            teacher=teacher.model if teacher else None)
  hp = step_lib.stack_hyperparams(specs, [
      stage_lib.class_weights(s.loss, ds, "sweep") for s in specs])
  cells = _Cells(*_init_cells(todo, student, model, ds, mesh, tx), hp,
                 vmap_chunk(chunk, len(specs)),
                 jax.jit(make_sweep_step(spec, tx), donate_argnums=0))
  return spec, cells, ds, cache_used, spe


def _teacher_source(specs, ds, teacher, spec, spe, mesh, cache_used):
  """(augmented views cache, live teacher function): where the cells'
  teacher logits come from when the per-example cache does not serve them
  (both None when it does, or without a teacher)."""
  if teacher is None or cache_used:
    return None, None
  views = teacher_cache.augmented_views(specs, ds, teacher, spec, spe, mesh,
                                        "sweep")
  if views is not None:
    return views, None
  return None, step_lib.make_live_teacher_fn(spec)


def _train_cells(todo, student, ds, mesh, teacher, chunk):
  """The sweep's cells ([(specs, workdir)]) of `student` through
  `loop.run_epochs`, then their tests."""
  specs = [s for s, _ in todo]
  k_cells, num_epochs = len(specs), specs[0].run.num_epochs
  spec, cells, ds, cache_used, spe = _setup(todo, student, ds, mesh, teacher,
                                            chunk)
  views, teacher_fn = _teacher_source(specs[0], ds, teacher, spec, spe, mesh,
                                      cache_used)
  teacher_vars = teacher.variables if teacher is not None else None
  eval_jit = jax.jit(step_lib.make_eval_step(spec.preprocess, spec.student,
                                             teacher=spec.teacher))
  evaluate = lambda variables, k, split="val", path=None: evaluate_lib.evaluate(
      eval_jit, variables, teacher_vars, getattr(ds, split), specs[k].data, mesh,
      teacher is not None, path)
  step = cells.loop["epoch"] * spe + cells.loop["step_in_epoch"]
  title = f"sweep x{k_cells} {student}"
  cells.attach(mesh=mesh, teacher_vars=teacher_vars, teacher_fn=teacher_fn,
               evaluate=evaluate, title=title, num_epochs=num_epochs,
               recalibrate=stage_lib.bn_recalibrator(
                   specs[0], spec.student, spec.preprocess, ds.train, mesh,
                   "sweep"),
               progress=reporting.Progress(f"sweep x{k_cells}", student,
                                           num_epochs * spe, step, spe))
  step = loop_lib.run_epochs(
      cells, stage_lib.epoch_batches(specs[0].data, ds.train, spe, views),
      step=step, num_epochs=num_epochs, steps_per_epoch=spe,
      log_every=specs[0].run.log_every_steps,
      checkpoint_every=specs[0].run.checkpoint_every_steps,
      prefetch_depth=specs[0].data.prefetch_depth)
  return [_cell_result(cells, k, step, cells.best.get(k), evaluate, teacher,
                       cache_used, sharding.replicated(mesh))
          for k in range(k_cells)]


def _cell_result(cells, k, step, best_vars, evaluate, teacher, cache_used,
                 repl):
  tr = cells.trackers[k]
  tr.ckpt.wait()
  state = cells.cell(k)
  if best_vars is None:  # the best epoch ran before a resume
    best_vars, _ = tr.ckpt.restore_best(model_init.inference_variables(state),
                                        repl)
  test = evaluate(best_vars, k, "test",
                  os.path.join(tr.stage_dir, evaluate_lib.PREDICTIONS))
  res = tr.result(step=step, test=test,
                  best_vars=best_vars, teacher=teacher, cache_used=cache_used,
                  state=state)
  res["vmapped_with"] = len(cells.trackers)
  return tr.finish(res)
