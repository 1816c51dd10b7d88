"""Keras weight files onto kd_jax zoo variables, matched by layer name.

`assign(name, like, path)` reads a Keras weight file with h5py alone (no
Keras or TensorFlow at run time) and returns `like`'s tree holding the file's
weights. The zoo's Keras-layout models (`kd_jax.models.keras_apps`) name
every Flax leaf module (Conv, grouped depthwise Conv, BatchNorm, Dense)
exactly as the Keras layer that holds its weights, so the leaf module's name
is the layer name whatever the Flax nesting.

Formats (the layouts as Keras 2 and Keras 3.15 write them):
  * legacy weights `.h5` (Keras 2 `save_weights`, the keras.applications
    downloads): root attribute `layer_names`; each layer's group lists its
    datasets in the attribute `weight_names` ('conv1_conv/kernel:0' in
    Keras 2, 'conv1_conv/kernel' in Keras 3's legacy writer).
  * legacy full model `.h5` (`model.save('x.h5')`): the same under the group
    `model_weights`.
  * Keras 3 `.weights.h5`: one group `layers/<class-based name>/vars` per
    layer (e.g. layers/batch_normalization_3/vars) whose attribute `name`
    holds the layer's name, with datasets '0', '1', ... in the layer's
    variable order (trainable first: kernel, bias / gamma, beta, moving_mean,
    moving_variance). Files without the `name` attribute (older Keras 3) are
    read inside a `.keras` archive, whose config.json gives the names.
  * `.keras`: a zip holding `model.weights.h5` in the Keras 3 layout (read
    into memory).
Keras -> Flax: kernel -> kernel, bias -> bias, gamma -> scale, beta -> bias,
moving_mean -> batch_stats mean, moving_variance -> batch_stats var; a
depthwise kernel (kh, kw, in, multiplier) becomes the grouped-conv kernel
(kh, kw, 1, in * multiplier).
"""
from __future__ import annotations

import io
import json
import re
import zipfile

from flax import traverse_util
import h5py
import numpy as np

from kd_jax.weight_spec import WeightImportError

HEAD = "predictions"  # Keras applications' include_top classifier
# The last part of a Keras weight name (':0' dropped) -> Flax (collection, leaf).
ROLES = {"kernel": ("params", "kernel"),
         "depthwise_kernel": ("params", "kernel"),
         "bias": ("params", "bias"),
         "gamma": ("params", "scale"),
         "beta": ("params", "bias"),
         "moving_mean": ("batch_stats", "mean"),
         "moving_variance": ("batch_stats", "var")}
# Keras 3 stores no weight names: a layer's variables come in this order,
# less the ones the layer lacks (a BN without scale has no gamma).
KERAS3_ORDER = {"bn": ("gamma", "beta", "moving_mean", "moving_variance"),
                "other": ("kernel", "bias")}


def _error(message):
  return WeightImportError(message)


def _text(value):
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attr_list(group, name):
  """An attribute holding a list of names; Keras splits one over the HDF5
  header limit into name0, name1, ..."""
  if name in group.attrs:
    return [_text(v) for v in np.atleast_1d(group.attrs[name])]
  out, i = [], 0
  while f"{name}{i}" in group.attrs:
    out += [_text(v) for v in np.atleast_1d(group.attrs[f"{name}{i}"])]
    i += 1
  return out


def read_layers(path: str) -> dict:
  """{layer name: [(weight name or None, array)]} of a Keras weight file;
  the weight name is None for Keras 3 files, which store none."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "model.weights.h5" not in names:
          raise _error(f"{path}: a zip without model.weights.h5 is not a "
                       ".keras file")
        data = archive.read("model.weights.h5")
        config = (json.loads(archive.read("config.json"))
                  if "config.json" in names else None)
      with h5py.File(io.BytesIO(data), "r") as f:
        return _read_h5(f, path, config)
    with h5py.File(path, "r") as f:
      return _read_h5(f, path, None)
  except OSError as e:  # not HDF5, truncated, unreadable
    raise _error(f"{path}: not a readable Keras weight file ({e})") from None


def _read_h5(f, path, config):
  if _attr_list(f, "layer_names"):
    return _read_legacy(f)
  if "model_weights" in f:
    return _read_legacy(f["model_weights"])
  if "layers" in f:
    return _read_keras3(f, path, config)
  raise _error(f"{path}: no Keras weights in it (neither a legacy "
               "`layer_names` list nor Keras 3 `layers` groups)")


def _read_legacy(group):
  out = {}
  for layer in _attr_list(group, "layer_names"):
    weights = _attr_list(group[layer], "weight_names")
    if weights:
      out[layer] = [(w, np.asarray(group[layer][w])) for w in weights]
  return out


def _read_keras3(f, path, config):
  fallback = _keras3_names(config)
  out = {}

  def visit(where, obj):
    parent = where.rpartition("/")[0]
    if (not isinstance(obj, h5py.Group) or where.split("/")[-1] != "vars"
        or where.startswith("optimizer") or not len(obj)):
      return
    name = _text(obj.attrs["name"]) if "name" in obj.attrs else fallback.get(parent)
    if name is None:
      raise _error(f"{path}: {where} does not name its layer (a file from an "
                   "older Keras 3): give the .keras file instead")
    # Datasets are '0', '1', ...: numeric order, so '10' follows '9'.
    out[name] = [(None, np.asarray(obj[k])) for k in sorted(obj, key=int)]
  f.visititems(visit)
  return out


def _snake_case(name):
  """keras.src.utils.naming.to_snake_case."""
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_names(config):
  """{'layers/<class-based name>': layer name} of a functional model's
  config.json: Keras 3 saves the layers in this order under the snake-case
  class name, numbered _1, _2, ... from the second of a class on."""
  if not config:
    return {}
  seen, out = {}, {}
  for layer in config.get("config", {}).get("layers", []):
    base = _snake_case(layer["class_name"])
    seen[base] = seen.get(base, -1) + 1
    key = base if seen[base] == 0 else f"{base}_{seen[base]}"
    out[f"layers/{key}"] = layer["config"]["name"]
  return out


def _modules(flat):
  """{leaf module name: its path} over the flattened variables; the path
  drops the collection and the leaf ('kernel', 'mean', ...)."""
  out = {}
  for key in flat:
    path = key[1:-1]
    if out.setdefault(path[-1], path) != path:
      raise _error(f"two modules named {path[-1]!r}: "
                   f"{'/'.join(out[path[-1]])} and {'/'.join(path)}")
  return out


def _pairs(layer, weights, targets):
  """[(Keras label, Flax (collection, leaf), array)] for one layer."""
  if weights[0][0] is not None:  # legacy formats name their weights
    out = []
    for wname, array in weights:
      role = ROLES.get(wname.split("/")[-1].split(":")[0])
      if role is None or role not in targets:
        raise _error(f"keras weight {layer}/{wname} has no counterpart in the "
                     f"model's layer {layer} ({_names(targets)})")
      out.append((f"{layer}/{wname}", role, array))
  else:
    kind = "bn" if ("batch_stats", "mean") in targets else "other"
    order = [w for w in KERAS3_ORDER[kind] if ROLES[w] in targets]
    if len(order) != len(weights):
      raise _error(f"keras layer {layer} holds {len(weights)} weights, the "
                   f"model's layer needs {len(order)} ({_names(targets)})")
    out = [(f"{layer}/vars/{i} ({w})", ROLES[w], a)
           for i, (w, (_, a)) in enumerate(zip(order, weights))]
  missing = set(targets) - {role for _, role, _ in out}
  if missing:
    raise _error(f"keras layer {layer} lacks the model's "
                 f"{_names(sorted(missing))}")
  return out


def _names(roles):
  return ", ".join(f"{c}/{leaf}" for c, leaf in roles)


def _fit(array, target):
  """`array` shaped and typed as `target`, or None when it cannot be."""
  a = np.asarray(array)
  if a.shape == target.shape:
    return a.astype(target.dtype)
  # Keras' depthwise kernel (kh, kw, in, mult) -> grouped conv (kh, kw, 1,
  # in * mult); output channel c * mult + j is input c's j-th filter in both.
  if (a.ndim == 4 and target.ndim == 4 and target.shape[2] == 1
      and a.shape[:2] == target.shape[:2]
      and a.shape[2] * a.shape[3] == target.shape[3]):
    return a.reshape(target.shape).astype(target.dtype)
  return None


def assign(name: str, like: dict, path: str) -> tuple[dict, bool]:
  """(`like` holding the file's weights, whether the head kept `like`'s
  fresh init). `like` = the zoo model `name`'s variables as nested dicts of
  numpy arrays; the head (`predictions`) keeps them when the file has none
  (include_top=False weights) or has another class count. `like` may hold
  jax.ShapeDtypeStructs instead (shapes are all the mapping reads): a kept
  head then stays one, for the caller to fill with a fresh init."""
  layers = read_layers(path)
  flat = traverse_util.flatten_dict(like)
  out, reinit = dict(flat), False
  for layer, mpath in _modules(flat).items():
    targets = {(k[0], k[-1]): k for k in flat if k[1:-1] == mpath}
    if layer not in layers:
      if layer == HEAD:
        reinit = True
        continue
      raise _error(f"{path}: no weights for the layer {layer!r} of {name}")
    pairs = _pairs(layer, layers[layer], targets)
    if layer == HEAD and _other_classes(pairs, flat, targets):
      reinit = True
      continue
    for label, role, array in pairs:
      target = flat[targets[role]]
      fitted = _fit(array, target)
      if fitted is None:
        raise _error(f"keras weight {label} has shape {tuple(np.shape(array))}"
                     f" but {name}'s {'/'.join(targets[role])} needs "
                     f"{tuple(target.shape)}")
      out[targets[role]] = fitted
  return traverse_util.unflatten_dict(out), reinit


def _other_classes(pairs, flat, targets):
  """Whether the file's head is one for another class count: same input
  width, another output width (a wrong input width stays an error)."""
  for _, role, array in pairs:
    target = flat[targets[role]]
    if role == ("params", "kernel"):
      return (np.ndim(array) == 2 and array.shape[0] == target.shape[0]
              and array.shape[1] != target.shape[1])
  return False
