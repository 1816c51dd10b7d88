"""Cell arg strings (`key=value,...,runlocal`) applied to a config, config
paths, tiny mode, and config files loaded by path."""
from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

from kd_jax import weight_spec
from kd_jax.distill import methods
from kd_jax.errors import UserError


def load_config_module(path: str):
  """The config (or study) file at `path` as a module: configs/ is not a
  package, so its files are loaded by path."""
  spec = importlib.util.spec_from_file_location(
      "kd_jax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def sibling_config(config_file: str, name: str):
  """The config module `name` (e.g. "crd_resnet8x4.py"), relative to the
  folder of `config_file` (a config's `__file__`): for a cell that starts
  from another file's recipe."""
  return load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


ALIASES = {
    "T": "kd.temperature", "temperature": "kd.temperature",
    "alpha": "kd.alpha", "method": "kd.method", "schedule": "kd.schedule",
    "student": "student.name", "teacher": "teacher.name",
    "dataset": "dataset.name", "seed": "seed", "epochs": "num_epochs",
    "image_size": "dataset.image_size", "assistants": "kd.assistants",
    "peers": "kd.peers", "hint_stages": "kd.hint_stages",
    "subclasses": "kd.subclasses", "ls": "kd.logit_standardization",
    "mixup": "dataset.mixup_alpha", "cutmix": "dataset.cutmix_alpha",
}


FLAGS_IN_ARG = ("runlocal", "tiny")


def _coerce(old, text: str):
  if isinstance(old, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise UserError(f"config arg value {text!r} is not a boolean")
  if isinstance(old, int):
    return int(text)
  if isinstance(old, float):
    return float(text)
  return text


def parse_arg(arg: str | None) -> dict:
  """'schedule=linear,seed=1,runlocal' -> {'kd.schedule': 'linear', ...}."""
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      if item not in FLAGS_IN_ARG:
        raise UserError(f"config arg {item!r} is neither key=value nor one "
                        f"of {', '.join(FLAGS_IN_ARG)}")
      out["runlocal"] = "true"
      continue
    key, value = item.split("=", 1)
    out[ALIASES.get(key.strip(), key.strip())] = value.strip()
  return out


def _parent(config: ml_collections.ConfigDict, path: str):
  """(the ConfigDict that holds the last key of dotted `path`, that key);
  UserError when a key along `path` does not exist."""
  *parents, leaf = path.split(".")
  node = config
  for key in parents:
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise UserError(f"config key {path!r} does not exist")
    node = node[key]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise UserError(f"config key {path!r} does not exist")
  return node, leaf


def set_path(config: ml_collections.ConfigDict, path: str, value):
  """Sets dotted `path` (``"kd.temperature"``) of `config` to `value` in
  place and returns `config`. The key must already exist and `value` must fit
  its type (UserError otherwise): a typo must not add a field that nothing
  reads."""
  node, leaf = _parent(config, path)
  try:
    node[leaf] = value
  except TypeError as e:  # ConfigDict's type safety, e.g. a str for an int
    raise UserError(f"config key {path!r}: {str(e).splitlines()[0]}") from None
  return config


def get_path(config: ml_collections.ConfigDict, path: str):
  node, leaf = _parent(config, path)
  return node[leaf]


def flatten(d: dict, prefix: str = "") -> dict:
  """Nested dicts -> one dict of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def apply_arg(config: ml_collections.ConfigDict, arg: str | None):
  """Applies a cell arg string to `config` in place; returns it."""
  for path, text in parse_arg(arg).items():
    try:
      node, leaf = _parent(config, path)
    except UserError:
      raise UserError(f"config arg key {path!r} does not exist") from None
    try:
      value = _coerce(node[leaf], text)
    except ValueError as e:
      raise UserError(f"config arg {path}={text!r}: {e}") from None
    set_path(config, path, value)
  if config.runlocal:
    make_tiny(config)
  return config


TINY_TEACHERS = ("simple_cnn", "tiny_cnn", "mlp", "mlp_1200x2", "mlp_small")


# Same feature names and downsampling per block as the big model.
TINY_HINT_TEACHERS = {"vgg16": "vgg_cifar", "vgg16_bn": "vgg_cifar",
                      "resnet50": "resnet18"}


def make_tiny(c: ml_collections.ConfigDict):
  """Tiny/runlocal mode: seconds on a CPU; same code path as a real run."""
  c.runlocal = True
  c.num_epochs = min(c.num_epochs, 2)
  if c.lr_schedule == "step":  # the decays land inside the short run
    c.lr_decay_epochs = "1"
  c.batch_size = 16
  c.eval_batch_size = 32
  c.max_steps_per_epoch = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  # A teacher used as is (teacher.checkpoint) is right only at the size its
  # weights were trained at (an ImageNet VGG16 at 32 px loses a third of
  # its accuracy); one whose training starts from weights (init_from) is
  # fine-tuned at the tiny size, like the student.
  if not c.teacher.checkpoint:
    c.dataset.image_size = min(c.dataset.image_size, 32)
  c.dataset.train_limit = 128
  c.dataset.eval_limit = 64
  # The student is kept; a big teacher (VGG16: 138M params) is swapped for a
  # small CNN so a tiny run takes seconds on a CPU, unless weights are given
  # for it: they fit only the model they were made for. With hint layers the
  # swap keeps the family, so the teacher's feature names still exist; a
  # term that pairs equal channels (FSP, KDSVD) or pre-ReLU maps (AB, OFD)
  # gets the student's architecture.
  named_layers = c.kd.hint_teacher_layer or c.kd.feature_layers
  term = (methods.feature_term(c.kd.method) if c.kd.method in methods.METHODS
          else None)
  if (not (c.teacher.checkpoint or c.teacher.init_from or c.teacher.logits)
      and c.teacher.name not in TINY_TEACHERS):
    own = term and (term.same_channels or term.layers == "preact_stages")
    c.teacher.name = (c.student.name if own else
                      TINY_HINT_TEACHERS.get(c.teacher.name, "simple_cnn")
                      if named_layers else "simple_cnn")
  c.kd.assistants = ",".join(
      m if m in TINY_TEACHERS else "tiny_cnn" for m in model_list(c.kd.assistants))
  if c.teacher.num_epochs > 0:
    c.teacher.num_epochs = min(c.teacher.num_epochs, 2)
  if c.kd.hint_epochs > 0:
    c.kd.hint_epochs = min(c.kd.hint_epochs, 2)
  pretrain = (methods.get(c.kd.method).pretrain
              if c.kd.method in methods.METHODS else None)
  if pretrain is not None:  # the method's pre-training stage (FSP)
    c.kd[pretrain.epochs] = min(c.kd[pretrain.epochs], 2)
  c.finetune.frozen_epochs = min(c.finetune.frozen_epochs, 1)
  return c


# (what the tiny-mode line calls a field, its path), in the line's order.
_SHRUNK = (("epochs", "num_epochs"), ("teacher epochs", "teacher.num_epochs"),
           ("hint epochs", "kd.hint_epochs"),
           ("head-only epochs", "finetune.frozen_epochs"),
           ("lr decay epochs", "lr_decay_epochs"), ("batch", "batch_size"),
           ("eval batch", "eval_batch_size")) + tuple(
               ("pre-training epochs", "kd." + name)
               for name in methods.pretrain_epoch_fields())


def tiny_changes(full: ml_collections.ConfigDict,
                 tiny: ml_collections.ConfigDict) -> str:
  """What tiny mode changed from `full` (the config without it) to `tiny`,
  e.g. 'epochs 30->2, batch 64->16, 4 steps/epoch, 128 train / 64 eval
  images, image 112->32 px, teacher vgg16->simple_cnn'."""
  parts = [f"{label} {get_path(full, path)}->{get_path(tiny, path)}"
           for label, path in _SHRUNK
           if get_path(full, path) != get_path(tiny, path)]
  if full.max_steps_per_epoch != tiny.max_steps_per_epoch:
    parts.append(f"{tiny.max_steps_per_epoch} steps/epoch")
  d, t = full.dataset, tiny.dataset
  if (d.train_limit, d.eval_limit) != (t.train_limit, t.eval_limit):
    parts.append(f"{t.train_limit or 'all'} train / {t.eval_limit or 'all'} "
                 "eval images")
  if d.image_size != t.image_size:
    parts.append(f"image {d.image_size}->{t.image_size} px")
  for label, path in (("teacher", "teacher.name"),
                      ("assistants", "kd.assistants")):
    if get_path(full, path) != get_path(tiny, path):
      parts.append(f"{label} {get_path(full, path) or '-'}->"
                   f"{get_path(tiny, path) or '-'}")
  if full.teacher.name == tiny.teacher.name and (
      tiny.teacher.checkpoint or tiny.teacher.init_from):
    at = f" at {t.image_size} px" if tiny.teacher.checkpoint else ""
    parts.append(f"teacher {tiny.teacher.name} kept{at} (given as weights)")
  return ", ".join(parts) or "nothing to shrink"


def _has_tiny_flag(arg: str) -> bool:
  return any(a.strip() in FLAGS_IN_ARG for a in arg.split(","))


def _set_all(config, overrides: dict, skip=("runlocal",)):
  for path, value in overrides.items():
    if path not in skip:
      set_path(config, path, value)


def command_line_config(config: ml_collections.ConfigDict, spec: str,
                        overrides: dict) -> ml_collections.ConfigDict:
  """The config a `kd_jax.main` run uses: `config` is `spec`'s
  (``path.py:arg``) with the command line's `overrides` (``--config.x=y``)
  applied after it. In tiny mode this prints one line saying what tiny mode
  shrank, and a foreign weight file given as an override keeps the teacher
  it was made for (see `_keep_imported_teacher`)."""
  if not config.runlocal:
    return config
  path, _, arg = spec.partition(":")
  rest = ",".join(a for a in arg.split(",") if a.strip() not in FLAGS_IN_ARG)
  full = load_config_module(path).get_config(rest or None)
  _set_all(full, overrides)
  if not _has_tiny_flag(arg):  # runlocal given as an override only
    make_tiny(config)
    _set_all(config, overrides)
  _keep_imported_teacher(config, full, overrides)
  print(f"kd_jax: tiny mode: {tiny_changes(full, config)}", file=sys.stderr,
        flush=True)
  return config


def _keep_imported_teacher(tiny, full, overrides: dict) -> None:
  """Overrides come after tiny mode, which has swapped a big teacher for a
  small one: a foreign weight file (torchvision/timm/Keras) named by
  teacher.checkpoint or teacher.init_from brings the configured teacher
  back (and, used as is, its image size), as if it had been in the arg
  string. A kd_jax run given this way is taken as made for the tiny config:
  a study passes its tiny teacher so."""
  checkpoint = weight_spec.foreign_source(overrides.get("teacher.checkpoint", ""))
  init_from = weight_spec.foreign_source(overrides.get("teacher.init_from", ""))
  if not (checkpoint or init_from):
    return
  if "teacher.name" not in overrides:
    tiny.teacher.name = full.teacher.name
  if checkpoint and "dataset.image_size" not in overrides:
    tiny.dataset.image_size = full.dataset.image_size


def model_list(text: str) -> list[str]:
  return [m.strip() for m in text.split(",") if m.strip()]
