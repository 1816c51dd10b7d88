"""Ablation studies: a study file declares its cells; this runs them.

A study is a config file (e.g. `configs/echo_study.py`) with
  get_config(arg)  -> the ml_collections config of one cell
  cells(arg=None)  -> the arg string of every cell; `arg` holds study-wide
                      items (`runlocal`, `seeds=3`, `dataset.data_dir=...`)
Layout of a study directory:
  <study_dir>/teacher/          the shared teacher, trained once: a
                                method='none' run of the cells' teacher model
  <study_dir>/<cell>/           one run per cell (`cell_dirname(arg)`), each
                                KD cell distilling from teacher/student
  <study_dir>/teacher_cache/    the teacher's logits, computed once for all
                                cells (teacher_cache.py; with augmentation,
                                once per augmented batch and data seed)
  <study_dir>/logs/<cell>.log   the cell's console output
A cell whose `results.json` exists is finished and skipped; an unfinished
one resumes from its checkpoints, so rerunning a study after an interruption
continues it.

  python -m kd_jax.study list    configs/echo_study.py [--arg=...] [--study_dir=...]
  python -m kd_jax.study run     configs/echo_study.py [--parallel=N] [--dry_run]
  python -m kd_jax.study run     configs/cifar_grid.py --vmap   # groups vmapped
  python -m kd_jax.study run     configs/echo_study.py --only=method=ctkd,student=ghostnet_100
  python -m kd_jax.study command configs/echo_study.py --index=I|teacher
  python -m kd_jax.study commands configs/echo_study.py   # all, tab-separated
  python -m kd_jax.study count   configs/echo_study.py
The SLURM array script `launch/slurm_study.sh` uses `count` and `command`.
`--only=KEY=VALUE,...` (with list, run, commands) keeps the cells whose
config has every given value: KEY is a cell axis (`method`, `student`,
`seed`, ...) or a config path (`kd.temperature`); `method=ctkd|dkd` or a
repeated key allows several values.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time

import ml_collections

from kd_jax import config_lib
from kd_jax import console
from kd_jax import cpu_runtime
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.train import pipeline as train
from kd_jax.train import sweep

TEACHER_DIR = "teacher"


# ------------------------------------------------------------ cell strings


def parse_study_arg(arg: str | None, *, seeds: int = 1):
  """'runlocal,seeds=3,dataset.data_dir=/d' -> (3, 'runlocal,dataset.data_dir=/d').

  `seeds=N` is the study's own option (cells for seeds 0..N-1); every other
  item is passed on to every cell.
  """
  rest = []
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if item.startswith("seeds="):
      try:
        seeds = int(item.split("=", 1)[1])
      except ValueError:
        raise UserError(f"study arg {item!r}: seeds must be an integer") from None
      if seeds < 1:
        raise UserError(f"study arg {item!r}: seeds must be >= 1")
    else:
      rest.append(item)
  return seeds, ",".join(rest)


def join(*args: str) -> str:
  return ",".join(a for a in args if a)


def cell_dirname(arg: str, common: str = "") -> str:
  """'student=ghostnet_100,method=vanilla,T=2,seed=0,runlocal' ->
  'student-ghostnet_100__method-vanilla__T-2__seed-0' (flags and the
  study-wide items `common` dropped: the study directory says those)."""
  drop = set(config_lib.FLAGS_IN_ARG) | {
      i.strip() for i in common.split(",") if i.strip()}
  items = [i.strip() for i in arg.split(",") if i.strip()]
  items = [i for i in items if i not in drop]
  name = "__".join(i.replace("=", "-") for i in items) or "default"
  return name.replace("/", "_")


# ------------------------------------------------------------------ --only


def parse_only(text: str) -> dict:
  """'method=ctkd|dkd,seed=0' -> {'kd.method': ('method', ['ctkd', 'dkd']),
  'seed': ('seed', ['0'])}: config path -> (the key as given, its values);
  keys take the cell args' aliases, and a repeated key adds values."""
  out = {}
  for item in text.split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = (s.strip() for s in item.partition("="))
    values = [v.strip() for v in value.split("|") if v.strip()]
    if not eq or not key or not values:
      raise UserError(f"--only item {item!r} is not KEY=VALUE (e.g. "
                      "--only=method=vanilla,seed=0)")
    path = config_lib.ALIASES.get(key, key)
    out.setdefault(path, (key, []))[1].extend(values)
  return out


def _same(value, text: str) -> bool:
  """Does a config value equal an --only value, read as the value's type
  (so that `T=4` matches 4.0)?"""
  if isinstance(value, bool):
    return text.lower() in (("1", "true", "yes") if value else
                            ("0", "false", "no"))
  if isinstance(value, (int, float)):
    try:
      return float(text) == value
    except ValueError:
      return False
  return str(value) == text


def cell_axes(cell_args, common: str = "") -> list[str]:
  """The keys the cells' args set, study-wide items left out: what the
  cells differ in (`student`, `method`, `seed`, ...)."""
  drop = {i.strip() for i in common.split(",")}
  keys = {}
  for arg in cell_args:
    for item in arg.split(","):
      if "=" in item and item.strip() not in drop:
        keys[item.split("=", 1)[0].strip()] = None
  return list(keys)


def select(configs, axes, only: str) -> list[int]:
  """Positions of the configs that match `only` (see parse_only): every
  key, any of its values. A key that is neither an axis nor a config leaf,
  or a value that no cell has, is refused (a typo would run nothing)."""
  keep = list(range(len(configs)))
  for path, (key, values) in parse_only(only).items():
    try:
      have = [config_lib.get_path(c, path) for c in configs]
    except UserError:
      have = None
    if have is None or isinstance(have[0], ml_collections.ConfigDict):
      raise UserError(f"--only key {key!r} is neither a cell axis "
                      f"({', '.join(axes) or 'none'}) nor a config value "
                      "such as kd.temperature")
    allowed = ", ".join(dict.fromkeys(str(h) for h in have))
    for v in values:
      if not any(_same(h, v) for h in have):
        raise UserError(f"--only {key}={v} matches no cell; {key} is one "
                        f"of: {allowed}")
    keep = [i for i in keep if any(_same(have[i], v) for v in values)]
  if not keep:
    raise UserError(f"--only={only} matches no cell: no cell has all of "
                    "these values together")
  return keep


# ------------------------------------------------------------- the study


def split_spec(spec: str, arg: str = "") -> tuple[str, str]:
  """`configs/x.py:a,b` -> (path, arg), as `kd_jax.main --config=` reads it;
  an `--arg` given as well is appended (its items win)."""
  path, _, suffix = spec.partition(":")
  return path, join(suffix, arg)


def load_module(path: str):
  if not os.path.isfile(path):
    raise UserError(f"study file {path!r} does not exist")
  mod = config_lib.load_config_module(path)
  for fn in ("get_config", "cells"):
    if not hasattr(mod, fn):
      raise UserError(f"{path} is not a study file: it has no {fn}()")
  return mod


def uses_study_teacher(c) -> bool:
  """Does this cell distil from the teacher the study trains? Not when it
  names its own teacher (a checkpoint, weight file or logits file), and not
  for subclass distillation: its teacher has `kd.subclasses` logits per
  class, so each such cell trains its own (main's teacher stage)."""
  return (c.kd.method in methods.TEACHER_METHODS
          and not (c.teacher.checkpoint or c.teacher.logits)
          and config_lib.subclasses(c) == 1)


@dataclasses.dataclass
class Cell:
  index: int | str  # position in cells(), or 'teacher'
  arg: str
  name: str
  workdir: str
  argv: list  # the kd_jax.main command line
  needs_teacher: bool
  overrides: dict = dataclasses.field(default_factory=dict)  # config path -> value

  @property
  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, "results.json"))


class Study:
  def __init__(self, path: str, arg: str | None = None,
               study_dir: str | None = None, teacher_cache: bool = True,
               only: str = ""):
    self.path, self.arg, self.only = path, arg or "", only
    self.teacher_cache = teacher_cache
    self.module = load_module(path)
    name = os.path.basename(path)[:-3]
    self.study_dir = os.path.abspath(study_dir or os.path.join(
        "studies", name + ("_" + cell_dirname(self.arg) if self.arg else "")))
    self.cell_args = list(self.module.cells(arg))
    if not self.cell_args:
      raise UserError(f"{path}: cells({arg!r}) is empty")
    self.common = parse_study_arg(self.arg)[1]
    names = [cell_dirname(a, self.common) for a in self.cell_args]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
      raise UserError(f"{path}: two cells share the name {sorted(dup)[0]!r}")
    if TEACHER_DIR in names:
      raise UserError(f"{path}: a cell may not be named {TEACHER_DIR!r}")
    self.configs = [self.module.get_config(a) for a in self.cell_args]
    for a, c in zip(self.cell_args, self.configs):
      try:
        config_lib.validate(c)
      except UserError as e:
        raise UserError(f"cell {a!r}: {e}") from None
    # Cells given a teacher (a checkpoint, a weight file or a logits file)
    # use it: the study trains a teacher only for the others.
    kd_configs = [c for c in self.configs if uses_study_teacher(c)]
    teachers = sorted({c.teacher.name for c in kd_configs})
    if len(teachers) > 1:
      raise UserError(f"{path}: cells use different teachers {teachers}; a "
                      "study shares one teacher")
    self.teacher_config = kd_configs[0] if kd_configs else None
    # The teacher comes from all cells, not from the selection: every
    # subset of the study distils from the same teacher run.
    self.keep = select(self.configs, cell_axes(self.cell_args, self.common),
                       only)

  # --- commands

  def _main_argv(self, arg, workdir, overrides):
    return [sys.executable, "-m", "kd_jax.main",
            f"--config={self.path}" + (f":{arg}" if arg else ""),
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]

  def config(self, cell: Cell):
    """The cell's config as `kd_jax.main` would build it (for in-process runs)."""
    c = self.module.get_config(cell.arg or None)
    for path, value in cell.overrides.items():
      config_lib.set_path(c, path, value)
    return c

  @property
  def teacher_workdir(self):
    return os.path.join(self.study_dir, TEACHER_DIR)

  def teacher_cell(self) -> Cell | None:
    """The shared teacher: the study's config with the teacher model as the
    'student', trained with cross-entropy for the teacher's epochs."""
    c = self.teacher_config
    if c is None:
      return None
    _, common = parse_study_arg(self.arg)
    overrides = {"student.name": c.teacher.name, "kd.method": methods.SCRATCH,
                 "scratch_baseline": False, "dataset.transfer_limit": 0,
                 "num_epochs": config_lib.teacher_epochs(c),
                 "learning_rate": config_lib.teacher_lr(c), "seed": c.seed}
    return Cell(TEACHER_DIR, common, TEACHER_DIR, self.teacher_workdir,
                self._main_argv(common, self.teacher_workdir, overrides), False,
                overrides)

  def cells(self) -> list[Cell]:
    out = []
    for i, (arg, c) in enumerate(zip(self.cell_args, self.configs)):
      distils = (c.kd.method in methods.TEACHER_METHODS
                 and not c.teacher.logits)
      needs = uses_study_teacher(c)
      overrides = {}
      if needs:
        overrides["teacher.checkpoint"] = os.path.join(self.teacher_workdir,
                                                       "student")
      if distils and self.teacher_cache and not c.teacher.cache_dir:
        # (used when augmentation is off)
        overrides["teacher.cache_dir"] = os.path.join(self.study_dir,
                                                      "teacher_cache")
      name = cell_dirname(arg, self.common)
      workdir = os.path.join(self.study_dir, name)
      out.append(Cell(i, arg, name, workdir,
                      self._main_argv(arg, workdir, overrides), needs,
                      overrides))
    return out

  def selected(self) -> list[Cell]:
    """The cells that `only` keeps (all without it)."""
    keep = set(self.keep)
    return [c for c in self.cells() if c.index in keep]

  def plan(self) -> list[Cell]:
    """The selected cells, after the teacher where one of them needs it."""
    cells = self.selected()
    teacher = self.teacher_cell()
    need = teacher is not None and any(c.needs_teacher for c in cells)
    return ([teacher] if need else []) + cells

  def cell(self, index: str) -> Cell:
    if index == TEACHER_DIR:
      cell = self.teacher_cell()
      if cell is None:
        raise UserError("this study has no teacher (no cell distils)")
      return cell
    cells = self.cells()
    try:
      i = int(index)
    except ValueError:
      raise UserError(f"cell index {index!r} is neither an integer nor "
                      f"{TEACHER_DIR!r}") from None
    if not 0 <= i < len(cells):
      raise UserError(f"cell index {i} out of range: the study has "
                      f"{len(cells)} cells (0..{len(cells) - 1})")
    return cells[i]


# ------------------------------------------------------------------ runner


def _run_cell(cell: Cell, log_dir: str, lock: threading.Lock, counter: dict,
              study: Study | None = None):
  """Runs one cell as a `kd_jax.main` process (or, given `study`, in this
  process: no start-up cost, for notebooks and tests). Returns 0 on success."""
  os.makedirs(log_dir, exist_ok=True)
  log_path = os.path.join(log_dir, cell.name + ".log")
  t0 = time.time()
  if study is not None:
    try:
      train.train_and_evaluate(study.config(cell), cell.workdir)
      rc = 0
    except UserError as e:
      print(f"kd_jax: error: {e}", file=sys.stderr)
      rc = 2
  else:
    with open(log_path, "a") as log:
      log.write(f"\n$ {shlex.join(cell.argv)}\n")
      log.flush()
      rc = subprocess.call(cell.argv, stdout=log, stderr=subprocess.STDOUT)
  with lock:
    counter["done"] += 1
    status = "done" if rc == 0 else f"FAILED (exit {rc}; see {log_path})"
    acc = ""
    if rc == 0:
      with open(os.path.join(cell.workdir, "results.json")) as f:
        acc = f" test acc {json.load(f)['rows'][-1]['test_accuracy']:.4f}"
    print(f"[{counter['done']}/{counter['total']}] {cell.name}: {status}"
          f"{acc} ({time.time() - t0:.0f} s)", flush=True)
  return rc


def vmap_groups(study: Study, cells) -> list[list[Cell]]:
  """`cells` grouped so that each group can be one vmapped program
  (sweep.py): same student, data and method, differing only in T, alpha,
  schedule or seed. Cells that cannot be vmapped form groups of one."""
  groups: dict = {}
  for cell in cells:
    c = study.config(cell)
    key = (sweep.group_key(c) if sweep.vmap_problem(c) is None
           else f"single:{cell.name}")
    groups.setdefault(key, []).append(cell)
  return list(groups.values())


def run(study: Study, *, parallel: int = 1, dry_run: bool = False,
        in_process: bool = False, vmap: bool = False,
        vmap_chunk: int = 0) -> int:
  """Runs the teacher (if a cell to run needs it), then every unfinished
  cell that `study.only` keeps, `parallel` processes at a time (or one
  after the other in this process; with `vmap`, groups of cells as one
  vmapped program each, in this process). Returns the number of failed
  cells."""
  teacher = study.teacher_cell()
  cells = study.selected()
  todo = [c for c in cells if not c.done]
  what = (f"{len(cells)} of the study's {len(study.cell_args)} cells "
          f"(--only={study.only})" if study.only else f"{len(cells)} cells")
  print(f"study {study.path}: {what} in {study.study_dir} "
        f"({len(cells) - len(todo)} finished, {len(todo)} to run)", flush=True)
  log_dir = os.path.join(study.study_dir, "logs")
  if dry_run:
    for c in study.plan():
      state = "done" if c.done else "todo"
      print(f"# {c.index} {c.name} [{state}]\n{shlex.join(c.argv)}")
    return 0
  lock = threading.Lock()
  if teacher is not None and not teacher.done and any(
      c.needs_teacher for c in todo):
    print(f"teacher: training {study.teacher_config.teacher.name} once for "
          "the whole study", flush=True)
    here = study if in_process or vmap else None
    if _run_cell(teacher, log_dir, lock, {"done": 0, "total": 1}, here):
      return len(todo)  # nothing can distil without the teacher
  counter = {"done": 0, "total": len(todo)}
  if vmap:
    return _run_vmapped(study, todo, counter, vmap_chunk)
  if in_process:
    codes = [_run_cell(c, log_dir, lock, counter, study) for c in todo]
  else:
    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
      codes = list(pool.map(lambda c: _run_cell(c, log_dir, lock, counter),
                            todo))
  failed = sum(1 for rc in codes if rc)
  print(f"study finished: {len(todo) - failed} cells ran, {failed} failed; "
        f"report: python -m kd_jax.report {study.study_dir}", flush=True)
  return failed


def _run_vmapped(study: Study, todo, counter, vmap_chunk=0) -> int:
  failed = 0
  for group in vmap_groups(study, todo):
    t0 = time.time()
    if len(group) == 1:
      failed += bool(_run_cell(group[0], os.path.join(study.study_dir, "logs"),
                               threading.Lock(), counter, study))
      continue
    try:
      sweep.train_group([study.config(c) for c in group],
                        [c.workdir for c in group], vmap_chunk=vmap_chunk)
      status = "done"
    except UserError as e:
      print(f"kd_jax: error: {e}", file=sys.stderr)
      status, failed = "FAILED", failed + len(group)
    counter["done"] += len(group)
    print(f"[{counter['done']}/{counter['total']}] vmapped group of "
          f"{len(group)} ({group[0].name} ...): {status} "
          f"({time.time() - t0:.0f} s)", flush=True)
  print(f"study finished: {counter['total'] - failed} cells ran, {failed} "
        f"failed; report: python -m kd_jax.report {study.study_dir}", flush=True)
  return failed


# --------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m kd_jax.study",
                              description="Run or inspect an ablation study.")
  p.add_argument("action", choices=("list", "run", "command", "commands",
                                    "count"))
  p.add_argument("study", help="study file, e.g. configs/echo_study.py, "
                 "optionally with its arg as main takes it: configs/x.py:runlocal")
  p.add_argument("--arg", default="", help="study-wide arg, e.g. runlocal,seeds=3")
  p.add_argument("--study_dir", default=None)
  p.add_argument("--only", action="append", default=[],
                 help="keep the cells with these values, e.g. "
                 "method=ctkd|dkd,student=ghostnet_100,seed=0 (list, run, "
                 "commands)")
  p.add_argument("--parallel", type=int, default=1,
                 help="cells run at the same time (each is one process)")
  p.add_argument("--dry_run", action="store_true", help="print, run nothing")
  p.add_argument("--in_process", action="store_true",
                 help="run the cells one after the other in this process")
  p.add_argument("--no_teacher_cache", action="store_true",
                 help="every cell runs the teacher itself")
  p.add_argument("--vmap", action="store_true",
                 help="train cells that differ only in T/alpha/schedule/seed "
                 "as one vmapped program (in this process)")
  p.add_argument("--vmap_chunk", type=int, default=0,
                 help="with --vmap: cells per vmap call (0: all on GPU/TPU, "
                 "1 on CPU)")
  p.add_argument("--index", default=None, help="cell index or 'teacher'")
  return p


def main(argv=None) -> int:
  console.quiet_native_logs()  # before anything imports TensorFlow
  cpu_runtime.configure()  # before JAX starts a backend (--in_process, --vmap)
  args = _parser().parse_args(argv)
  only = ",".join(args.only)
  try:
    # count and command index the whole study (the SLURM array's tasks)
    if only and args.action in ("count", "command"):
      raise UserError(f"--only works with list, run and commands, not with "
                      f"{args.action}")
    path, arg = split_spec(args.study, args.arg)
    study = Study(path, arg, args.study_dir,
                  teacher_cache=not args.no_teacher_cache, only=only)
    if args.action == "count":
      print(len(study.cell_args))
    elif args.action == "command":
      if args.index is None:
        raise UserError("command needs --index=I or --index=teacher")
      print(shlex.join(study.cell(args.index).argv))
    elif args.action == "commands":  # every cell: 'index<TAB>command'
      for c in study.plan():
        print(f"{c.index}\t{shlex.join(c.argv)}")
    elif args.action == "list":
      for c in study.plan():
        print(f"{c.index}\t{'done' if c.done else 'todo'}\t{c.name}\t{c.arg}")
    else:
      failed = run(study, parallel=args.parallel, dry_run=args.dry_run,
                   in_process=args.in_process, vmap=args.vmap,
                   vmap_chunk=args.vmap_chunk)
      return 1 if failed else 0
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  return 0
