"""Vectorised sweeps: K cells that share a student architecture and data,
trained in one jitted program.

The cells of a group may differ only in `VMAP_FIELDS` (temperature, alpha,
CTKD lambda schedule, seed). Their parameters, optimizer states and
hyperparameters are stacked on a leading K axis and one `jax.vmap`-ed step
updates them all (on CPU by default one cell per call of the same compiled
step: see `vmap_chunk`); the input pipeline and the teacher's logits (cached,
or one forward pass per step) are shared by all cells. The data order
and augmentation follow the group's `data_seed` (a cell's own `seed` sets
its initial weights and dropout), and each cell's config is written with that
`data_seed`, so rerunning a cell on its own reproduces it. Each cell gets the
same files as a separate run: `<workdir>/config.json`, `results.json`, and
`student/{results.json, checkpoints/{latest,best}, logs/}`; a finished cell is
skipped and an interrupted group resumes from its cells' latest checkpoints.

CTKD's lambda curriculum is applied to the temperature's gradient before the
optimizer (same update as the `scale_by_schedule` of `train.make_optimizer`,
but with a per-cell schedule).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import checkpointing, config_lib, data, losses, metrics, models
from kd_jax import reporting, sharding, teacher_cache, train
from kd_jax.config_lib import UserError

VMAP_FIELDS = ("kd.temperature", "kd.alpha", "kd.schedule", "seed")
VMAP_METHODS = ("none", "vanilla", "conditional", "ctkd", "dkd", "dist")


def group_key(config) -> str:
  """Cells with equal keys can share one vmapped program."""
  flat = train._flatten(json.loads(config.to_json()))
  for k in VMAP_FIELDS:
    flat.pop(k, None)
  flat["data_seed"] = train.data_seed(config) if config.data_seed >= 0 else None
  return json.dumps(flat, sort_keys=True)


def check_group(configs):
  c0 = configs[0]
  if c0.kd.method not in VMAP_METHODS:
    raise UserError(f"method {c0.kd.method!r} cannot be vmapped; allowed: "
                    f"{', '.join(VMAP_METHODS)}")
  if c0.kd.hint_student_layer or c0.kd.assistants:
    raise UserError("hint layers and teacher assistants cannot be vmapped")
  if c0.kd.method != "none" and not c0.teacher.checkpoint:
    raise UserError("a vmapped group distils from a trained teacher: set "
                    "config.teacher.checkpoint (studies do this)")
  if c0.scratch_baseline:
    raise UserError("a vmapped group trains students only: set "
                    "config.scratch_baseline=False (scratch cells are "
                    "method=none cells)")
  keys = {group_key(c) for c in configs}
  if len(keys) > 1:
    raise UserError("the cells of a vmapped group may differ only in "
                    f"{', '.join(VMAP_FIELDS)}")


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _slice(tree, k):
  """Cell `k` of a stacked tree (one dispatch, not one per leaf)."""
  return jax.tree.map(lambda a: a[k], tree)


def _lambda(epoch, cosine, kd):
  """CTKD's lambda at `epoch`; `cosine` (per cell) picks the schedule."""
  cos = losses.curriculum_lambda(epoch, schedule="cosine", lambda_min=kd.lambda_min,
                                 lambda_max=kd.lambda_max, epoch_cap=kd.epoch_cap)
  lin = losses.curriculum_lambda(epoch, schedule="linear", lambda_min=kd.lambda_min,
                                 lambda_max=kd.lambda_max, epoch_cap=kd.epoch_cap)
  return jnp.where(cosine, cos, lin)


def vmap_chunk(chunk: int, k_cells: int) -> int:
  """Cells per vmap call: `chunk`, or (0: auto) all of them on GPU/TPU and
  one at a time on CPU, where a vmapped convolution becomes a grouped
  convolution that XLA:CPU runs far slower than K separate ones."""
  if chunk:  # >= 1 (train_group refuses a negative one)
    return min(chunk, k_cells)
  return k_cells if jax.default_backend() != "cpu" else 1


def make_teacher_fn(config, teacher):
  """`(teacher_vars, images, step) -> logits`: a live teacher's forward on the
  step's (augmented) batch, computed once per step and shared by every chunk
  of cells (the sweep step itself only reads logits)."""
  dseed = train.data_seed(config)

  def fn(teacher_vars, images, step_i):
    x = train._preprocess(config, images, train.step_rngs(dseed, step_i)[0])
    return teacher.model.apply(teacher_vars, x, train=False)
  return fn


def make_sweep_step(config, student, tx, *, steps_per_epoch):
  """`step(states_K, hp_K, active_K, batch)`: the K cells' updates under vmap.
  `batch` is (images, labels) or, when distilling, (images, labels,
  teacher_logits): the teacher's logits come from the cache or from
  `make_teacher_fn`, computed once for all cells."""
  method, kd = config.kd.method, config.kd
  dseed = train.data_seed(config)

  def step(states, hp, active, batch):
    images, labels_B, *cached = batch
    step_i = states.step[0]
    aug_rng = train.step_rngs(dseed, step_i)[0]
    x = train._preprocess(config, images, aug_rng)
    t_logits = jax.lax.stop_gradient(cached[0]) if cached else None
    epoch = step_i // steps_per_epoch

    def one(state, h, on):
      dropout_rng = train.step_rngs(h["seed"], state.step)[1]

      def loss_fn(params):
        variables = train._variables(params["student"], state.batch_stats["student"])
        logits, new = student.apply(variables, x, train=True,
                                    mutable=["batch_stats"],
                                    rngs={"dropout": dropout_rng})
        if method == "ctkd":
          temperature = losses.ctkd_temperature(
              params["temperature"], t_start=kd.t_start, t_end=kd.t_end)
        elif method == "none":
          temperature = jnp.float32(1.0)
        else:
          temperature = h["temperature"]
        loss = train.method_loss(config, method, logits, t_logits, labels_B,
                                 epoch=epoch, temperature=temperature,
                                 alpha=h["alpha"])
        return loss, (logits, new.get("batch_stats", {}), temperature)

      (loss, (logits, stats, temperature)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
      if method == "ctkd":
        grads = dict(grads, temperature=grads["temperature"] * _lambda(
            epoch, h["cosine"], kd))
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      new = train.TrainState(state.step + 1,
                             optax.apply_updates(state.params, updates),
                             {"student": stats}, opt_state)
      # A cell stopped early keeps its state (its step still advances).
      new = jax.tree.map(lambda n, o: jnp.where(on, n, o), new, state)
      new = new.replace(step=state.step + 1)
      pred = jnp.argmax(logits, -1)
      m = {"loss": loss, "accuracy": jnp.mean(pred == labels_B),
           "temperature": temperature}
      if t_logits is not None:
        m["agreement"] = jnp.mean(pred == jnp.argmax(t_logits, -1))
      return new, m

    return jax.vmap(one)(states, hp, active)

  return step


def train_group(configs, workdirs, *, vmap_chunk: int = 0) -> list[dict]:
  """Trains the cells `configs` (one per `workdirs`) as one vmapped program;
  returns each cell's run summary (the same as `train_and_evaluate`'s).
  `vmap_chunk`: cells per vmap call (0: auto, see `vmap_chunk`)."""
  if vmap_chunk < 0:
    raise UserError(f"vmap_chunk={vmap_chunk} must be >= 0 (0: auto)")
  for c in configs:
    config_lib.validate(c)
  check_group(configs)
  dseed = train.data_seed(configs[0])
  configs = [c.copy_and_resolve_references() for c in configs]
  for c in configs:
    c.data_seed = dseed  # the group's data order, recorded in each cell
  todo = [(c, w) for c, w in zip(configs, workdirs)
          if not os.path.exists(os.path.join(w, "results.json"))]
  done = [_read_json(os.path.join(w, "results.json"))
          for c, w in zip(configs, workdirs)
          if os.path.exists(os.path.join(w, "results.json"))]
  if not todo:
    reporting.log(f"sweep: all {len(configs)} cells already finished")
    return done
  for c, w in todo:
    train._check_workdir(w, c)
  config = todo[0][0]
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "batch_size", mesh)
  sharding.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  ds = data.load(config)
  teacher = teacher_result = None
  if config.kd.method != "none":
    teacher = train._load_teacher(config, ds, mesh, config.teacher.checkpoint)
    teacher_result = train._evaluate_loaded_teacher(config, ds, mesh, teacher)
  for c, w in todo:
    os.makedirs(w, exist_ok=True)
    if jax.process_index() == 0:
      reporting.write_json(os.path.join(w, "config.json"), json.loads(c.to_json()))
  reporting.log(f"sweep: {len(todo)} cells of {config.student.name} "
                f"({config.kd.method}) in one vmapped program; data: "
                f"{ds.describe()}")
  rows = _train_cells(todo, ds, mesh, teacher, vmap_chunk)
  out = []
  for (c, w), student in zip(todo, rows):
    stages = [teacher_result, student] if teacher_result else [student]
    summary = reporting.summarize_run(c, ds, stages)
    if jax.process_index() == 0:
      reporting.write_json(os.path.join(w, "results.json"), summary)
    out.append(summary)
  return done + out


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _train_cells(todo, ds, mesh, teacher, chunk):
  configs = [c for c, _ in todo]
  config = configs[0]
  k_cells = len(configs)
  model = models.get_model(config.student.name, num_classes=ds.num_classes)
  spe = data.steps_per_epoch(len(ds.train), config.batch_size,
                             config.max_steps_per_epoch)
  num_epochs = config.num_epochs
  repl = sharding.replicated(mesh)
  tx = train.make_optimizer(config, learning_rate=config.learning_rate,
                            num_epochs=num_epochs, steps_per_epoch=spe,
                            ctkd=config.kd.method == "ctkd", lambda_in_tx=False)
  ok, _ = teacher_cache.usable(config)
  if teacher is not None and ok:
    logits = teacher_cache.load_or_compute(
        config, ds, type(teacher.model).__name__, teacher, mesh)
    ds = dataclasses.replace(ds, **{
        n: dataclasses.replace(getattr(ds, n), teacher_logits=logits[n])
        for n in teacher_cache.SPLITS})

  # Per-cell initial state: the same weights a separate run starts from.
  # Both compiled once for all cells (the cells differ only in VMAP_FIELDS).
  init = train.make_init(model, config, mesh)
  init_state = jax.jit(lambda p, b: train.TrainState(
      jnp.int32(0), p, {"student": b}, tx.init(p)), out_shardings=repl)
  states, loops, ckpts = [], [], []
  for c, w in todo:
    params, stats = init(jax.random.fold_in(jax.random.PRNGKey(c.seed), 2))
    params = {"student": params}
    if c.kd.method == "ctkd":
      params["temperature"] = jnp.float32(c.kd.init_raw)
    state = init_state(params, stats)
    ckpt = checkpointing.StageCheckpoints(os.path.join(w, "student"))
    loop = {"epoch": 0, "step_in_epoch": 0, "best_val": -1.0, "best_epoch": -1,
            "bad_epochs": 0, "history": [], "train_seconds": 0.0,
            "stopped": False}
    restored = ckpt.restore_latest(state, repl)
    if restored is not None:
      state, loop = restored
    states.append(state)
    loops.append(loop)
    ckpts.append(ckpt)
  # Resume at the position every cell reached (they advance together).
  start = min((l["epoch"], l["step_in_epoch"]) for l in loops)
  if any((l["epoch"], l["step_in_epoch"]) != start for l in loops):
    raise UserError("the cells of this vmapped group were saved at different "
                    "steps; run them separately")
  # The cells in chunks of `cs`: one vmapped call per chunk and step.
  cs = vmap_chunk(chunk, k_cells)
  starts = range(0, k_cells, cs)
  chunks = [_stack(states[i:i + cs]) for i in starts]
  hp = {"temperature": jnp.asarray([c.kd.temperature for c in configs], jnp.float32),
        "alpha": jnp.asarray([c.kd.alpha for c in configs], jnp.float32),
        "seed": jnp.asarray([c.seed for c in configs], jnp.int32),
        "cosine": jnp.asarray([c.kd.schedule == "cosine" for c in configs])}
  hp_chunks = [jax.tree.map(lambda a, i=i: a[i:i + cs], hp) for i in starts]
  step_fn = jax.jit(make_sweep_step(config, model, tx, steps_per_epoch=spe),
                    donate_argnums=0)
  live_teacher = teacher is not None and not ok
  teacher_fn = jax.jit(make_teacher_fn(config, teacher)) if live_teacher else None
  eval_jit = jax.jit(train.make_eval_step(config, model, teacher))
  teacher_vars = teacher.variables if teacher is not None else None
  writers = [metrics.create_writer(os.path.join(w, "student", "logs"),
                                   jax.process_index() == 0) for _, w in todo]
  epoch, step_in_epoch = start
  step = epoch * spe + step_in_epoch
  progress = reporting.Progress(f"sweep x{k_cells}", config.student.name,
                                num_epochs * spe, step, spe)
  has_teacher = teacher is not None
  best = [None] * k_cells  # inference variables of each cell's best epoch

  def meta(k):
    return {**loops[k], "model": config.student.name, "role": "student",
            "num_classes": ds.num_classes, "subclasses": 1,
            "image_size": config.dataset.image_size, "dataset": ds.name,
            "class_names": list(ds.class_names)}

  while epoch < num_epochs and not all(l["stopped"] for l in loops):
    active = jnp.asarray([not l["stopped"] for l in loops])
    t_epoch = time.time()
    pending = []
    for host_batch in data.train_batches(
        ds.train, global_batch=config.batch_size, seed=train.data_seed(config),
        epoch=epoch, num_steps=spe, start_step=step_in_epoch,
        image_size=config.dataset.image_size,
        process_index=jax.process_index(), process_count=jax.process_count()):
      batch = sharding.global_batch(host_batch, mesh)
      if teacher_fn is not None:  # once per step, not once per chunk
        batch = (*batch, teacher_fn(teacher_vars, batch[0], jnp.int32(step)))
      out = [step_fn(ch, h, active[i:i + cs], batch)
             for ch, h, i in zip(chunks, hp_chunks, starts)]
      chunks = [o[0] for o in out]
      m = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[o[1] for o in out])
      pending.append(m)
      step += 1
      if len(pending) >= config.log_every_steps:
        _flush(writers, pending, step, progress, loops, config)
        pending = []
    if pending:
      _flush(writers, pending, step, progress, loops, config)
    seconds = time.time() - t_epoch
    for k in range(k_cells):
      loop = loops[k]
      if loop["stopped"]:
        continue
      loop["train_seconds"] += seconds / k_cells
      cell = _slice(chunks[k // cs], k % cs)
      variables = train._variables(cell.params["student"],
                                   cell.batch_stats["student"])
      val = train.evaluate(eval_jit, variables, teacher_vars, ds.val, configs[k],
                           mesh, has_teacher)
      writers[k].write_scalars(step, {f"val_{n}": v for n, v in val.items()
                                      if n != "confusion"} | {"epoch": epoch + 1})
      loop["history"].append({"epoch": epoch + 1, "step": step, **{
          n: v for n, v in val.items() if n != "confusion"}})
      improved = val["accuracy"] > loop["best_val"]
      if improved:
        loop.update(best_val=val["accuracy"], best_epoch=epoch + 1, bad_epochs=0)
        ckpts[k].save_best(step, variables, meta(k))
        best[k] = variables  # the test evaluation needs no restore
      else:
        loop["bad_epochs"] += 1
      patience = configs[k].early_stopping_patience
      if patience and loop["bad_epochs"] >= patience:
        loop["stopped"] = True
    epoch += 1
    step_in_epoch = 0
    for k in range(k_cells):
      loops[k].update(epoch=epoch, step_in_epoch=0)
      ckpts[k].save_latest(step, _slice(chunks[k // cs], k % cs), meta(k))
    reporting.log(f"[sweep x{k_cells} {config.student.name}] epoch {epoch}/"
                  f"{num_epochs}: val acc " + " ".join(
                      f"{l['history'][-1]['accuracy']:.4f}" for l in loops))

  rows = []
  for k, (c, w) in enumerate(todo):
    ckpts[k].wait()
    cell = _slice(chunks[k // cs], k % cs)
    best_vars = best[k]
    if best_vars is None:  # the best epoch ran before a resume
      like = train._variables(cell.params["student"], cell.batch_stats["student"])
      best_vars, _ = ckpts[k].restore_best(like, repl)
    test = train.evaluate(eval_jit, best_vars, teacher_vars, ds.test, c, mesh,
                          has_teacher)
    loop = loops[k]
    res = {
        "role": "student", "model": c.student.name, "method": c.kd.method,
        "dataset": ds.name, "num_classes": ds.num_classes,
        "image_size": c.dataset.image_size,
        "params": train.param_count(best_vars["params"]),
        "size_mb": train.size_mb(best_vars), "test": test,
        "best_val_accuracy": loop["best_val"], "best_epoch": loop["best_epoch"],
        "epochs_run": len(loop["history"]), "steps": step,
        "history": loop["history"], "train_seconds": loop["train_seconds"],
        "checkpoint": os.path.abspath(os.path.join(w, "student", "checkpoints", "best")),
        "teacher_cache": bool(teacher is not None and ok),
        "vmapped_with": len(todo),
    }
    if teacher is not None:
      res["teacher_checkpoint"] = teacher.path
    if c.kd.method == "ctkd":
      res["final_temperature"] = float(losses.ctkd_temperature(
          cell.params["temperature"], t_start=c.kd.t_start, t_end=c.kd.t_end))
    if jax.process_index() == 0:
      reporting.write_json(os.path.join(w, "student", "results.json"), res)
    ckpts[k].close()
    writers[k].close()
    rows.append(res)
  return rows


def _flush(writers, pending, step, progress, loops, config):
  rows = jax.device_get(pending)  # [n steps] of {name: [K]}
  first = step - len(rows) + 1
  for k, w in enumerate(writers):
    if loops[k]["stopped"]:
      continue
    if config.kd.method == "ctkd":
      for i, r in enumerate(rows):
        w.write_scalars(first + i, {"temperature": float(r["temperature"][k])})
    mean = {n: float(np.mean([r[n][k] for r in rows])) for n in rows[0]
            if n != "temperature" or config.kd.method == "ctkd"}
    w.write_scalars(step, {f"train_{n}": v for n, v in mean.items()})
  all_mean = {n: float(np.mean([r[n] for r in rows])) for n in rows[0]
              if n != "temperature"}
  progress.update(step, all_mean["loss"])
  progress.print(step, all_mean)
