"""Where a model's weights come from when it does not start from scratch.

A weight spec is `torchvision:PATH`, `timm:PATH`, `keras:PATH` (a weight
file of another framework, `models/interop/convert.py`), a bare weight file (its
framework inferred from the suffix), or a kd_jax run: a workdir, a stage
directory or a `checkpoints/best` directory.
  * `frozen(...)`: the frozen teacher of `teacher.checkpoint`, used as is
    (its head must already have the data's class count).
  * `initial_variables(...)`: the starting point of `*.init_from`; a head
    with another class count is re-initialised (one log line).
  * `stage_feature_params(...)`: the feature module's params a
    pre-training stage ended with (FT's paraphraser), for the student
    stage that freezes them.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from kd_jax import models
from kd_jax import reporting
from kd_jax import weight_spec
from kd_jax.errors import UserError
from kd_jax.models.interop import convert
from kd_jax.train import checkpointing


def _import(spec, model_name, outputs, fresh=None):
  source, path = weight_spec.parse_spec(spec)
  try:
    return convert.import_weights_full(model_name, path, num_classes=outputs,
                                       source=source, fresh=fresh)
  except weight_spec.WeightImportError as e:
    raise UserError(f"{spec}: {e}") from None


def _put(variables, sharding_):
  return jax.device_put(jax.tree.map(np.asarray, variables), sharding_)


def frozen_variables(spec, *, model_name, outputs, sharding_, role="teacher"):
  """(variables, source path) of a foreign file used as a frozen model."""
  result = _import(spec, model_name, outputs)
  if result.head_reinitialised:
    found = (f"the file's classifier has {result.file_outputs} outputs"
             if result.file_outputs else "the file has no classifier")
    raise UserError(
        f"{role} weights {spec}: {found}, this run's {model_name} needs "
        f"{outputs} (one per class of the data); a frozen {role} needs its "
        f"own classifier (use {role}.init_from to fine-tune it first)")
  reporting.log(f"[{role}] {model_name} imported from {result.source} weights "
                f"{weight_spec.parse_spec(spec)[1]}")
  return _put(result.variables, sharding_), os.path.abspath(
      weight_spec.parse_spec(spec)[1])


def _kd_jax_variables(path, model_name, outputs, image_size, sharding_, role):
  """A kd_jax checkpoint's variables for `model_name`; leaves whose shape
  depends on the class count (the head) are fresh when the counts differ."""
  _, meta = checkpointing.read_model_meta(path)
  if meta.get("model") != model_name:
    raise UserError(f"{role}.init_from={path} holds a {meta.get('model')!r}, "
                    f"not a {model_name!r}")
  saved = meta["num_classes"] * meta.get("subclasses", 1)
  like = models.init_shapes(model_name, saved, image_size)
  variables, _ = checkpointing.load_teacher(
      path, expected_model=model_name, num_classes=meta["num_classes"],
      image_size=meta["image_size"], like_variables=like,
      sharding=sharding_, subclasses=meta.get("subclasses", 1))
  return variables, saved != outputs


def initial_variables(spec, *, model_name, outputs, image_size, fresh,
                      sharding_, role):
  """(params, batch_stats) a stage starts from. `fresh` is the model's
  newly initialised variables, whose head is kept where the class count of
  the weights differs."""
  if weight_spec.foreign_source(spec):
    # The import itself fills a head the file cannot fill from `fresh`.
    result = _import(spec, model_name, outputs, fresh)
    variables, reinit = result.variables, result.head_reinitialised
    where = f"{result.source} weights {weight_spec.parse_spec(spec)[1]}"
  else:
    variables, reinit = _kd_jax_variables(spec, model_name, outputs,
                                          image_size, sharding_, role)
    where = f"kd_jax checkpoint {checkpointing.resolve_model_dir(spec)}"
    if reinit:
      head = models.head_mask(model_name, outputs, image_size)
      variables = jax.tree.map(lambda is_head, f, v: f if is_head else v,
                               head, jax.device_get(fresh),
                               dict(jax.device_get(variables)))
  reporting.log(f"[{role}] {model_name} starts from {where}"
                + (f"; its head is re-initialised for {outputs} outputs"
                   if reinit else ""))
  variables = _put(variables, sharding_)
  return variables["params"], variables.get("batch_stats", {})


def stage_feature_params(stage_dir, like):
  """The feature module's params in the last checkpoint of the stage in
  `stage_dir` (methods.Pretrain, hands_over='feature'), checked against
  `like` (the student stage's fresh copy, for its tree and shapes)."""
  root = os.path.join(stage_dir, "checkpoints", "latest")
  try:
    params = checkpointing.read_packed_state(root)[1]["params"]["feature"]
  except (FileNotFoundError, KeyError, TypeError) as e:
    raise UserError(f"{stage_dir}: no pre-trained feature module in its "
                    f"latest checkpoint ({type(e).__name__}: {e})") from None
  shapes = lambda t: jax.tree.map(lambda x: tuple(np.shape(x)), t)
  if shapes(params) != shapes(jax.device_get(like)):
    raise UserError(f"{stage_dir}: its pre-trained feature module does not "
                    "fit this run's layers (rerun it: delete the directory)")
  return jax.tree.map(np.asarray, params)
