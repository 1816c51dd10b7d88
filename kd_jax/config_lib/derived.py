"""What a config means beyond its fields: values resolved from several
fields (normalisation, class weights, epochs, hint links, feature layer
pairs), read the same way by every layer."""
from __future__ import annotations

import json

import re

from kd_jax import models
from kd_jax import weight_spec
from kd_jax.config_lib.args import get_path
from kd_jax.config_lib.args import model_list
from kd_jax.config_lib.defaults import CLASS_WEIGHTS
from kd_jax.distill import methods
from kd_jax.errors import UserError


def teacher_epochs(c) -> int:
  return c.teacher.num_epochs if c.teacher.num_epochs > 0 else c.num_epochs


def hint_epochs(c) -> int:
  return c.kd.hint_epochs if c.kd.hint_epochs > 0 else c.num_epochs


def teacher_bf16(c) -> bool:
  """Whether the frozen teacher's forwards (live and cached) run in bf16."""
  return c.teacher.compute_dtype == "bfloat16"


def teacher_lr(c) -> float:
  return c.teacher.learning_rate if c.teacher.learning_rate > 0 else c.learning_rate


def int_list(text) -> list[int]:
  """'150,180,210' -> [150, 180, 210] (a single int is a list of one)."""
  return [int(x) for x in str(text).split(",") if x.strip()]


def weight_fields(c) -> list[str]:
  """The weight specs this config uses (a run without a teacher ignores
  the teacher's)."""
  teacher = (["teacher.checkpoint", "teacher.init_from"]
             if c.kd.method in methods.TEACHER_METHODS else [])
  return teacher + ["student.init_from"]


def class_weights_setting(c):
  """config.loss.class_weights parsed: None ('none'), 'balanced' or a tuple
  of positive floats (their count is checked against the data's classes
  where the data is known: step.class_weights)."""
  text = str(c.loss.class_weights).strip()
  if text in CLASS_WEIGHTS:
    return None if text == "none" else text
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if not values or not all(v > 0 and v < float("inf") for v in values):
    raise UserError(
        f"config.loss.class_weights={c.loss.class_weights!r} is not allowed; "
        "allowed: 'none', 'balanced' or a comma list of positive floats, one "
        "per class (e.g. '1,2.5')")
  return values


def normalization(c) -> str:
  """`dataset.normalization` with 'auto' resolved (`auto_normalization`)."""
  n = c.dataset.normalization
  return auto_normalization(c) if n == "auto" else n


def as_json(c) -> dict:
  """The config as the JSON a run records (config.json, results.json,
  stage fingerprints): 'auto' normalisation written as what it resolves
  to, so that the two spellings are one setup."""
  out = json.loads(c.to_json())
  out["dataset"]["normalization"] = normalization(c)
  return out


def auto_normalization(c) -> str:
  """The normalisation imported weights expect ('half' without any); one
  line when the teacher's and the student's weights disagree."""
  specs = [get_path(c, what) for what in weight_fields(c)]
  found = {weight_spec.normalization(s) for s in specs} - {None}
  if len(found) > 1:
    raise UserError(
        "the imported teacher and student weights expect different input "
        f"normalisations ({', '.join(sorted(found))}); set "
        "config.dataset.normalization to one of them")
  return found.pop() if found else "half"


def hints_enabled(c) -> bool:
  return (bool(c.kd.hint_student_layer)
          and methods.get(c.kd.method).teacher)


def subclasses(c) -> int:
  """Logits per class of teacher and student (1 unless the method has
  subclass logits)."""
  return c.kd.subclasses if methods.get(c.kd.method).subclass_logits else 1


def peers(c) -> list[str]:
  if not methods.get(c.kd.method).cohort:
    return []
  return model_list(c.kd.peers) or [c.student.name]


def hint_links(c) -> list[tuple[str, str, tuple[str, str]]]:
  """(model, its teacher, (guided layer, hint layer)) of each distillation
  link with hints, teacher side first: the assistants, then the student.
  Each assistant's layer is guided by its teacher's and hints the next."""
  k = c.kd
  models_ = model_list(k.assistants) + [c.student.name]
  layers = model_list(k.hint_assistant_layers)
  layers = layers * len(models_[:-1]) if len(layers) == 1 else layers
  guided = layers + [k.hint_student_layer]
  teachers = [c.teacher.name] + models_[:-1]
  hints = [k.hint_teacher_layer] + layers
  return [(m, t, (g, h)) for m, t, g, h in zip(models_, teachers, guided, hints)]


def _natural_key(name: str):
  """'stage10' after 'stage9': digits compare as numbers."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# A stage map before its last ReLU is sown as '<stage>_preact'.
PREACT = "_preact"


def stage_maps(shapes: dict) -> list[str]:
  """A model's stage outputs, shallow to deep: its `[B, H, W, C]` features
  but the stem and the pre-ReLU maps, in the natural order of their names
  (block1, block2, ...; the models number their stages)."""
  return sorted((n for n, s in shapes.items() if len(s) == 4 and n != "stem"
                 and not n.endswith(PREACT)), key=_natural_key)


def _preact_pairs(s_shapes, t_shapes, names):
  """The stage maps with a pre-ReLU version in both models, paired from
  the last, as their '_preact' features."""
  s_maps, t_maps = ([m + PREACT for m in stage_maps(shapes)
                     if m + PREACT in shapes]
                    for shapes in (s_shapes, t_shapes))
  n = min(len(s_maps), len(t_maps))
  if not n:
    who = names[0] if not s_maps else names[1]
    raise UserError(
        f"{who} has no pre-ReLU stage maps ('<stage>{PREACT}' features: the "
        "CIFAR ResNets and plain CNNs have them) for the method's default "
        "layers; set config.kd.feature_layers")
  return list(zip(s_maps[len(s_maps) - n:], t_maps[len(t_maps) - n:]))


def _default_pairs(rule, s_shapes, t_shapes, names):
  if rule == "preact_stages":
    return _preact_pairs(s_shapes, t_shapes, names)
  pooled = ("pre_logits", "pre_logits")
  s_maps, t_maps = stage_maps(s_shapes), stage_maps(t_shapes)
  n = min(len(s_maps), len(t_maps))
  if rule != "pooled" and not n:
    who = names[0] if not s_maps else names[1]
    raise UserError(f"{who} has no feature maps ([B, H, W, C] features) for "
                    "the method's default layers; set config.kd.feature_layers")
  stages = list(zip(s_maps[len(s_maps) - n:], t_maps[len(t_maps) - n:]))
  stem = [("stem", "stem")] if "stem" in s_shapes and "stem" in t_shapes else []
  return {"stages": stages, "last_stage": stages[-1:], "pooled": [pooled],
          "stages_and_pooled": stages + [pooled],
          "stem_and_stages": stem + stages}[rule]


def feature_layer_pairs(method, feature_layers, student_shapes,
                        teacher_shapes, *, student_name, teacher_name) -> tuple:
  """((student layer, teacher layer), ...) of `method`'s feature
  term for these models ({name: shape}: models.feature_shapes): those of
  config.kd.feature_layers, else the method's default (methods.FeatureTerm:
  the deepest stage maps of both models paired from the last, and/or
  'pre_logits'). UserError for a name a model lacks, or a flat feature
  where the method needs maps."""
  term = methods.feature_term(method)
  names = (student_name, teacher_name)
  pairs = [tuple(p.split(":", 1)) if ":" in p else (p, p)
           for p in model_list(feature_layers)]
  pairs = pairs or _default_pairs(term.layers, student_shapes, teacher_shapes,
                                  names)
  if term.one_pair and len(pairs) != 1:
    raise UserError(f"config.kd.feature_layers={feature_layers!r}: "
                    f"method {method!r} takes one layer pair")
  for pair in pairs:
    for layer, shapes, name in zip(pair, (student_shapes, teacher_shapes),
                                   names):
      if layer not in shapes:
        raise UserError(f"config.kd.feature_layers: {layer!r} is not a feature"
                        f" of {name}; allowed: {', '.join(shapes)}")
      if term.maps and len(shapes[layer]) != 4:
        raise UserError(
            f"config.kd.feature_layers: method {method!r} needs feature "
            f"maps [B, H, W, C]; {name}.{layer} has shape "
            f"{'x'.join(map(str, shapes[layer][1:]))}")
    channels = [shapes[layer][-1] for layer, shapes in
                zip(pair, (student_shapes, teacher_shapes))]
    if term.same_channels and channels[0] != channels[1]:
      raise UserError(
          f"config.kd.feature_layers: method {method!r} needs as many "
          f"channels in the student's layer as in the teacher's; "
          f"{student_name}.{pair[0]} has {channels[0]}, "
          f"{teacher_name}.{pair[1]} has {channels[1]}")
  return tuple(pairs)


def hint_shapes(config, num_classes, link=-1):
  """Shapes of the guided and the hint feature of distillation link `link`
  (config_lib.hint_links: the assistants', then the student's), checked:
  both names must exist and the spatial sizes must agree (the 1x1 adapter
  only maps channels)."""
  size = config.dataset.image_size
  links = hint_links(config)
  student, teacher, (guided, hint) = links[link]
  last = link % len(links) == len(links) - 1
  fields = ("hint_student_layer" if last else "hint_assistant_layers",
            "hint_teacher_layer" if link % len(links) == 0
            else "hint_assistant_layers")

  def feature_shape(name, layer, what):
    feats = models.feature_shapes(name, num_classes, size)
    if layer not in feats:
      raise UserError(f"config.kd.{what}={layer!r} is not a feature of "
                      f"{name}; allowed: {', '.join(feats)}")
    return feats[layer]

  s_shape = feature_shape(student, guided, fields[0])
  t_shape = feature_shape(teacher, hint, fields[1])
  if len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
    raise UserError(
        f"hint layers do not match in spatial size at {size}px: student "
        f"{student}.{guided} is "
        f"{'x'.join(map(str, s_shape[1:]))}, teacher {teacher}."
        f"{hint} is {'x'.join(map(str, t_shape[1:]))} "
        "(pick layers with equal height and width)")
  return s_shape, t_shape
