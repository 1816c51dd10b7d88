"""Training pipeline: teacher (cross-entropy), KD student, and scratch student.

`train_and_evaluate(config, workdir)` runs the stages a config asks for:
  teacher/  trained here with plain cross-entropy (subclass distillation:
            CE on grouped logits + the auxiliary loss) unless
            `config.teacher.checkpoint` names a trained one;
  assistant<i>_<model>/  teacher-assistant links (`config.kd.assistants`),
            each distilled from the previous link, whose checkpoint it loads;
  hint/     FitNets stage 1 (`config.kd.hint_stages=2`): the student trained
            up to its guided layer on the hint loss; stage 2 (student/)
            starts from this checkpoint;
  pretrain/ a method's pre-training stage (methods.Pretrain: FSP, AB, FT):
            trained on its feature term alone; student/ starts from its
            student (FSP, AB) or freezes its feature module (FT's
            paraphraser);
  scratch/  the student without a teacher (`config.scratch_baseline`);
  student/  the student trained with `config.kd.method` (for deep mutual
            learning, the whole cohort is trained here together).
Each stage (stage.py) resumes from its latest checkpoint and is skipped when
its `results.json` exists. The run's summary lands in `workdir/results.json`.
The train step itself is step.py's; the methods' needs are methods.py's.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any
import time

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from kd_jax import config_lib
from kd_jax import models
from kd_jax import reporting
from kd_jax import weight_spec
from kd_jax.data import datasets as data
from kd_jax.data import teacher_logits
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import evaluate as evaluate_lib
from kd_jax.train import model_init
from kd_jax.train import preemption
from kd_jax.train import pretrained
from kd_jax.train import sharding
from kd_jax.train import step as step_lib
from kd_jax.train.stage import Stage


def load_frozen(specs: config_lib.Specs, ds, mesh, path, name=None,
                subclasses=1) -> step_lib.Frozen:
  """A frozen model (teacher or assistant) from a kd_jax model checkpoint or
  a foreign weight file (`torchvision:PATH`, `timm:PATH`, `keras:PATH`).
  The configured teacher (`teacher.checkpoint`) with `teacher.class_names`
  comes with its classifier in the data's class order."""
  name = name or specs.teacher.name
  # teacher.class_names describes teacher.checkpoint only: a teacher trained
  # in this run and every assistant learn the data's order.
  order = None
  if specs.teacher.class_names and path == specs.teacher.checkpoint:
    order = teacher_order(specs.teacher.class_names, ds.class_names)
  outputs = ds.num_classes * subclasses
  model = models.get_model(name, num_classes=outputs)
  if weight_spec.foreign_source(path):
    variables, where = pretrained.frozen_variables(
        path, model_name=name, outputs=outputs,
        sharding_=sharding.replicated(mesh))
  else:
    like = models.init_shapes(name, outputs, specs.data.image_size)
    variables, _ = checkpointing.load_teacher(
        path, expected_model=name, num_classes=ds.num_classes,
        image_size=specs.data.image_size, like_variables=like,
        sharding=sharding.replicated(mesh), subclasses=subclasses)
    where = checkpointing.resolve_model_dir(path)
    reporting.log(f"[teacher] {name} loaded from {where}")
  if order is not None:
    variables = head_in_data_order(variables, name, order,
                                   specs.data.image_size)
    reporting.log(
        f"[teacher] outputs mapped from teacher.class_names "
        f"{','.join(specs.teacher.class_names)} to the data's class order "
        f"{','.join(ds.class_names)}")
  return step_lib.Frozen(model, variables, subclasses, where)


def teacher_order(teacher_names, data_names):
  """`order[j]`: the teacher's output that is data class j; one line when
  the teacher's names are not the data's."""
  teacher_names, data_names = tuple(teacher_names), tuple(data_names)
  if sorted(teacher_names) != sorted(data_names):
    missing = [n for n in data_names if n not in teacher_names]
    unknown = [n for n in teacher_names if n not in data_names]
    parts = []
    if missing:
      parts.append(f"it lacks {', '.join(missing)}")
    if unknown:
      parts.append(f"the data has no {', '.join(unknown)}")
    detail = "; ".join(parts) or "a name is repeated"
    raise UserError(
        f"config.teacher.class_names={','.join(teacher_names)} does not name "
        f"the data's classes {','.join(data_names)}: {detail} (one name per "
        "teacher output, in the teacher's order)")
  return np.asarray([teacher_names.index(n) for n in data_names])


def head_in_data_order(variables, name, order, image_size):
  """`variables` with the classifier's output units (the head leaves'
  last axis: kernel columns, bias) reordered so that output j is
  `order[j]` of the file: data class j. Done once at load time so that
  every consumer of the teacher's logits (steps, cache, evaluation,
  agreement, hint and feature methods' logit terms) sees the data's
  order."""
  head = models.head_mask(name, len(order), image_size)

  def reorder(is_head, x):
    if not is_head:
      return x
    if x.shape[-1] != len(order):
      raise UserError(f"config.teacher.class_names: the {name} head's "
                      f"parameter of shape {tuple(x.shape)} has no output "
                      f"axis last; this model's outputs cannot be reordered")
    return jax.device_put(np.asarray(jax.device_get(x))[..., order],
                          x.sharding)

  return jax.tree.map(reorder, head, dict(variables))


def check_workdir(workdir, config, overwrite=False):
  """Refuses a workdir that holds a run of a different config (with
  `overwrite`, moves that run aside to `<workdir>.old-<time>`: nothing is
  deleted). Returns the stored config when the run there predates some of
  today's config fields and they all hold their defaults (a new field's
  default keeps what came before it): that run resumes as it was written,
  its config.json and checkpoint fingerprints kept. Otherwise None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = json.load(f)
  new = config_lib.as_json(config)
  if old == new:
    return None
  old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(new)
  diff = sorted(k for k in set(old_flat) | set(new_flat)
                if old_flat.get(k) != new_flat.get(k))
  added = _added_at_default(old_flat, new_flat)
  if set(diff) <= added:
    reporting.log(f"workdir {workdir} was written before config field(s) "
                  f"{', '.join(diff)} existed; they hold their defaults, so "
                  "the run continues as written")
    return old
  if overwrite:
    _move_aside(workdir)
    return None
  raise UserError(f"workdir {workdir} holds a run of a different config "
                  f"(differs in {', '.join(diff[:5])}); use another "
                  "--workdir, or --overwrite to move that run aside")


def _added_at_default(old_flat, new_flat):
  """The keys only the new config has that hold base_config's default."""
  defaults = config_lib.flatten(config_lib.as_json(config_lib.base_config()))
  return {k for k in set(new_flat) - set(old_flat)
          if k in defaults and new_flat[k] == defaults[k]}


def _move_aside(workdir):
  aside = f"{os.path.normpath(workdir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  if jax.process_index() == 0:
    os.rename(workdir, aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("kd_jax_overwrite")
  reporting.log(f"--overwrite: moved the previous run to {aside}")


def as_written(specs, stored):
  """`specs` fingerprinting checkpoints as the run in the workdir did:
  with its stored config (check_workdir's return) where it has one."""
  if stored is None:
    return specs
  return dataclasses.replace(specs,
                             config_json=json.dumps(stored, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every stage of a run shares, read once before anything is
  written: the data, the mesh, the subclass groups and the hint links."""
  ds: Any
  mesh: Any
  groups: int  # logits per class (subclass distillation)
  links: tuple  # each link's (guided layer, hint layer); () without hints
  specs: config_lib.Specs  # the config read once
  as_written: bool = False  # the workdir's config.json predates new fields

  def common(self) -> dict:
    return dict(ds=self.ds, mesh=self.mesh)

  def student_run(self, config) -> dict:
    return dict(num_epochs=config.num_epochs,
                learning_rate=config.learning_rate, **self.common())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict:
  """Runs every stage of `config` in `workdir`; returns the run summary."""
  run, teacher, teacher_result = _prepare(config, workdir, overwrite)
  # --- nothing above this line writes to the workdir ---
  _start_workdir(config, workdir, run)
  if methods.get(config.kd.method).teacher and teacher_result is None:
    teacher, teacher_result = _teacher(config, workdir, run, teacher)
  rows = [teacher_result] if teacher_result is not None else []
  # Teacher assistants: each link is a distillation run whose best
  # checkpoint is the next link's teacher.
  for i, name in enumerate(config_lib.model_list(config.kd.assistants)):
    link_dir = os.path.join(workdir, f"assistant{i + 1}_{name}")
    rows.append(Stage(run.specs, role=f"assistant{i + 1}", model_name=name,
                      method=config.kd.method, stage_dir=link_dir,
                      teacher=teacher, subclasses=run.groups,
                      hint=run.links[i] if run.links else None,
                      **run.student_run(config)).run())
    teacher = load_frozen(run.specs, run.ds, run.mesh, link_dir, name=name,
                          subclasses=run.groups)
  rows += _student_rows(config, workdir, run, teacher)
  summary = reporting.summarize_run(config_lib.as_json(config), run.ds, rows)
  summary |= data.skipped_summary(run.ds)
  if jax.process_index() == 0:
    reporting.write_json(os.path.join(workdir, "results.json"), summary)
  reporting.log("\n" + reporting.format_table(summary["rows"]))
  return summary


def _prepare(config, workdir, overwrite):
  """(run, loaded teacher or None, teacher row or None): every check that
  can fail on the user's input, before the workdir is touched."""
  config_lib.validate(config)
  specs = config_lib.read_specs(config)
  preemption.install_sigterm_handler()
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, "batch_size", mesh)
  sharding.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  ds = data.load(config)
  groups = config_lib.subclasses(config)
  links = ()
  if config_lib.hints_enabled(config):
    links = tuple(pair for _, _, pair in config_lib.hint_links(config))
  for i in range(len(links)):
    config_lib.hint_shapes(config, ds.num_classes, i)  # a bad pair fails here
  teacher = teacher_result = None
  if methods.get(config.kd.method).teacher and config.teacher.logits:
    ds = teacher_logits.attach(config, ds)
    teacher_result = logits_teacher_result(config, ds)
  elif methods.get(config.kd.method).teacher and config.teacher.checkpoint:
    teacher = load_frozen(specs, ds, mesh, specs.teacher.checkpoint,
                          subclasses=groups)
  stored = check_workdir(workdir, config, overwrite)
  specs = as_written(specs, stored)
  checkpointing.check_resumable(workdir, specs, ds)
  return (_Run(ds, mesh, groups, links, specs, stored is not None), teacher,
          teacher_result)


def _start_workdir(config, workdir, run):
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and not run.as_written:
    reporting.write_json(os.path.join(workdir, "config.json"),
                         config_lib.as_json(config))
  reporting.log(f"data: {run.ds.describe()}; devices: {run.mesh.size} "
                f"({jax.default_backend()}, {jax.process_count()} process(es))")
  if run.specs.data.transfer_limit:
    n = len(data.stage_data(run.ds, "student",
                            run.specs.data.transfer_limit).train)
    reporting.log(f"transfer set: {n} of the {len(run.ds.train)} training "
                  "images (the teacher trains on all of them)")


def _teacher(config, workdir, run, teacher):
  """(frozen teacher, its row): the loaded one evaluated, or one trained
  in workdir/teacher."""
  if teacher is not None:
    return teacher, evaluate_loaded_teacher(run.specs, run.ds, run.mesh,
                                            teacher)
  result = Stage(
      run.specs, role="teacher", model_name=config.teacher.name,
      method=methods.SUBCLASS_TEACHER if run.groups > 1 else methods.SCRATCH,
      stage_dir=os.path.join(workdir, "teacher"), subclasses=run.groups,
      init_from=config.teacher.init_from,
      frozen_epochs=finetune_epochs(config, config.teacher.init_from),
      num_epochs=config_lib.teacher_epochs(config),
      learning_rate=config_lib.teacher_lr(config), **run.common()).run()
  teacher = load_frozen(run.specs, run.ds, run.mesh,
                        os.path.join(workdir, "teacher"), subclasses=run.groups)
  return teacher, result


def _student_rows(config, workdir, run, teacher) -> list:
  """FitNets stage 1 (two-stage hints), the scratch baseline and the
  student."""
  rows, kd, method = [], config.kd, methods.get(config.kd.method)
  hint = run.links[-1] if run.links else None
  init_from = s_init = config.student.init_from
  s_frozen = finetune_epochs(config, s_init)
  if run.links and kd.hint_stages == 2:
    hint_dir = os.path.join(workdir, "hint")
    rows.append(Stage(run.specs, role="hint", model_name=config.student.name,
                      method=methods.HINT, stage_dir=hint_dir, teacher=teacher,
                      hint=hint, select_best=False, init_from=s_init,
                      num_epochs=config_lib.hint_epochs(config),
                      learning_rate=config.learning_rate, **run.common()).run())
    init_from, hint = hint_dir, None  # stage 2: KD from the hint weights
    s_frozen = 0
  feature_from, pre = "", method.pretrain
  if pre is not None:
    pre_dir = os.path.join(workdir, "pretrain")
    rows.append(Stage(run.specs, role="pretrain", model_name=config.student.name,
                      method=pre.method, stage_dir=pre_dir,
                      teacher=teacher, select_best=False, init_from=init_from,
                      num_epochs=int(kd[pre.epochs]),
                      learning_rate=kd[pre.lr] if pre.lr else
                      config.learning_rate, **run.common()).run())
    if pre.hands_over == "feature":
      feature_from = pre_dir
    else:
      init_from, s_frozen = pre_dir, 0
  if config.scratch_baseline and (method.teacher or method.cohort):
    rows.append(Stage(run.specs, role="scratch", model_name=config.student.name,
                      method=methods.SCRATCH,
                      stage_dir=os.path.join(workdir, "scratch"),
                      teacher=teacher, init_from=s_init,
                      frozen_epochs=finetune_epochs(config, s_init),
                      **run.student_run(config)).run())
  rows.append(Stage(run.specs, role="student", model_name=config.student.name,
                    method=kd.method, stage_dir=os.path.join(workdir, "student"),
                    teacher=teacher, subclasses=run.groups, init_from=init_from,
                    hint=hint, peers=config_lib.peers(config),
                    frozen_epochs=s_frozen, feature_from=feature_from,
                    **run.student_run(config)).run())
  return rows


def logits_teacher_result(config, ds) -> dict:
  """The run table's teacher row for a logits file: its test metrics."""
  path = os.path.abspath(config.teacher.logits)
  reporting.log(f"[teacher] logits from {path}: no teacher forward pass")
  return {"role": "teacher", "model": config.teacher.name or "logits",
          "method": "logits file", "params": 0, "size_mb": 0.0,
          "test": teacher_logits.evaluate(ds.test), "checkpoint": path}


def finetune_epochs(config, init_from) -> int:
  """Fine-tuning's frozen epochs for a stage starting from `init_from`."""
  return config.finetune.frozen_epochs if init_from else 0


def evaluate_loaded_teacher(specs: config_lib.Specs, ds, mesh, teacher):
  t_model, t_vars = teacher.model, teacher.variables
  data_spec = specs.data
  eval_jit = jax.jit(step_lib.make_eval_step(
      step_lib.Preprocess.from_spec(data_spec), t_model,
      subclasses=teacher.subclasses))
  test = evaluate_lib.evaluate(eval_jit, t_vars, None, ds.test, data_spec,
                               mesh, False)
  imported = weight_spec.foreign_source(specs.teacher.checkpoint)
  return {"role": "teacher", "model": specs.teacher.name,
          "method": f"imported ({imported})" if imported else "loaded",
          "params": model_init.param_count(t_vars["params"]),
          "size_mb": model_init.size_mb(t_vars),
          "test": test, "checkpoint": teacher.path}
