"""Weights of torchvision, timm and Keras models as kd_jax zoo variables.

`import_weights(name, path, num_classes=...)` reads a weight file from disk
(nothing downloads) and returns `{'params', 'batch_stats'}` for
`get_model(name, num_classes=num_classes)`, BatchNorm running statistics
included. Sources:
  torchvision / timm: a state dict in `.safetensors` (read with the
    `safetensors` package, no torch needed) or `.pth` / `.pt` (needs torch).
  keras: Keras applications weights, `.h5` / `.weights.h5` / `.keras`
    (read with h5py; `kd_jax.models.interop.keras_weights`).
A classifier head whose class count differs from `num_classes` (or that the
file lacks, e.g. Keras' `include_top=False` weights) keeps the model's fresh
initialisation; `ImportResult.head_reinitialised` says so.

Torch state dicts are matched layer by layer, not by name: the file's
modules (conv: 4-D weight, linear: 2-D weight, BatchNorm: running statistics)
in torch's registration order are paired with the zoo model's nn.Conv /
nn.Dense / nn.BatchNorm layers in the order its forward pass calls them, and
every tensor's shape is checked. Conv weights go OIHW -> HWIO (grouped convs:
(kh, kw, in/groups, out), flax's layout), linear weights (out, in) -> (in, out),
BatchNorm weight/bias -> params scale/bias and running_mean/var ->
batch_stats mean/var. For all ten torchvision / timm zoo models the two
orders agree, so no model needs a rule of its own.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pickle

import flax.linen as nn
import jax
import numpy as np
from safetensors import flax as st_jax
from safetensors import numpy as st_numpy

from kd_jax.models import zoo
from kd_jax.models.interop import keras_weights
from kd_jax.weight_spec import infer_source
from kd_jax.weight_spec import SOURCES
from kd_jax.weight_spec import TRUST_PICKLE_ENV
from kd_jax.weight_spec import WeightImportError


@dataclasses.dataclass
class ImportResult:
  variables: dict  # {'params': ..., ['batch_stats': ...]} of numpy arrays
  source: str
  head_reinitialised: bool
  # The file's classifier outputs (its last linear layer), where the file
  # has one and its framework says so (torch state dicts).
  file_outputs: int | None = None


def init_variables(name: str, num_classes: int, image_size: int = 224,
                   rng=None) -> dict:
  """The zoo model's fresh variables as numpy arrays (the import's template)."""
  model = zoo.get_model(name, num_classes=num_classes)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  variables = jax.jit(lambda r: zoo.init(model, r, image_size))(rng)
  return jax.tree.map(np.asarray, variables)


def import_weights_full(name: str, path: str, *, num_classes: int,
                        source: str | None = None, rng=None,
                        fresh=None) -> ImportResult:
  """`import_weights` plus where the weights came from; a head the file
  cannot fill comes from `fresh` (the caller's initialised variables) or a
  new init with `rng`."""
  if source is None:
    source = infer_source(path)
  if source not in SOURCES:
    raise WeightImportError(f"weight source {source!r} is not one of "
                            f"{', '.join(SOURCES)}")
  if not os.path.isfile(path):
    raise WeightImportError(f"weight file {path!r} does not exist")
  # Shapes suffice to place the file's tensors; fresh values need a jitted
  # init, whose compilation takes seconds to tens of seconds on a CPU, so
  # they are made only for a head that the file cannot fill.
  shapes = zoo.init_shapes(name, num_classes, 224)
  file_outputs = None
  if source == "keras":
    variables, reinit = keras_weights.assign(name, shapes, path)
  else:
    state = read_state_dict(path)
    variables, reinit = assign_torch(name, shapes, state)
    linear = [t for _, kind, t in _torch_modules(state) if kind == "linear"]
    file_outputs = int(linear[-1]["weight"].shape[0]) if linear else None
  if reinit:
    if fresh is None:
      fresh = init_variables(name, num_classes, rng=rng)
    variables = jax.tree.map(
        lambda v, f: np.asarray(f) if isinstance(v, jax.ShapeDtypeStruct)
        else v, variables, jax.device_get(fresh))
  return ImportResult(variables, source, reinit, file_outputs)


def import_weights(name: str, path: str, *, num_classes: int,
                   source: str | None = None, rng=None) -> dict:
  """The variables for `get_model(name, num_classes=num_classes).apply(
  variables, x_NHWC, train=False)` from a torchvision / timm / Keras file."""
  return import_weights_full(name, path, num_classes=num_classes,
                             source=source, rng=rng).variables


def read_state_dict(path: str) -> dict:
  """{key: float32 numpy array} of a torch state dict file: `.safetensors`
  without torch, `.pth` / `.pt` / `.bin` with `torch.load(weights_only=True)`.
  A checkpoint dict wrapping the state dict under 'state_dict' or 'model' is
  unwrapped, and DataParallel's 'module.' prefix is dropped."""
  try:
    if path.lower().endswith(".safetensors"):
      raw = _safetensors_load(path)
    else:
      raw = _torch_load(path)
  except WeightImportError:
    raise
  except Exception as e:  # any reader failure is a bad file for the user
    detail = " ".join(str(e).split())[:200]
    kind = ("a safetensors file" if path.lower().endswith(".safetensors")
            else "a torch checkpoint")
    raise WeightImportError(f"cannot read weight file {path!r} as {kind}: "
                            f"{type(e).__name__}: {detail}") from None
  state = {}
  for key, value in raw.items():
    if hasattr(value, "detach"):  # a torch tensor (bf16 has no numpy dtype)
      value = value.detach().cpu().float().numpy()
    if not isinstance(value, np.ndarray):
      continue  # checkpoint metadata stored next to the tensors
    key = key[len("module."):] if key.startswith("module.") else key
    state[key] = value.astype(np.float32, copy=False)
  if not state:
    raise WeightImportError(f"weight file {path!r} holds no tensors")
  return state


def _safetensors_load(path: str) -> dict:
  try:
    return st_numpy.load_file(path)
  except TypeError:  # bfloat16, which numpy lacks: read as jax arrays
    return {k: np.asarray(v, np.float32)
            for k, v in st_jax.load_file(path).items()}


def _unpickled_state_dict(torch, path: str) -> dict:
  """The state dict of a whole pickled model (`--trust_pickle`); its class
  must be importable here, as torch.load needs it."""
  try:
    obj = torch.load(path, map_location="cpu", weights_only=False)
  except (AttributeError, ModuleNotFoundError) as e:
    raise WeightImportError(
        f"{path!r}: unpickling the model needs its class ({e}); import it "
        "where torch can find it, or save model.state_dict()") from None
  return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _torch_load(path: str) -> dict:
  try:
    import torch
  except ImportError:
    raise WeightImportError(
        f"reading {path!r} needs torch: pip install 'kd_jax[interop]', or "
        "convert the file to .safetensors (read without torch)") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "Unsupported global" not in str(e):
      raise  # not a pickle at all: read_state_dict says so in one line
    # torch.save(model) pickles the model's class; weights_only refuses
    # to run that code (its message is pages long).
    if os.environ.get(TRUST_PICKLE_ENV) != "1":
      raise WeightImportError(
          f"{path!r} holds a whole pickled model (torch.save(model)), not a "
          "state dict: save torch.save(model.state_dict(), PATH) and pass "
          "that file, or pass --trust_pickle to unpickle it with torch (it "
          "runs code the file names: only for a file you trust)") from None
    obj = _unpickled_state_dict(torch, path)
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise WeightImportError(f"{path!r} holds a {type(obj).__name__}, not a "
                            "state dict")
  return obj


# Registration order of the named (non-numeric) child modules of the torchvision
# and timm zoo models: a `.safetensors` file stores its tensors sorted by name,
# so the registration order is rebuilt from these names (a `.pth` goes through
# the same order, so both formats import alike). Names that are never siblings
# may share this one list; names outside it keep their order in the file,
# after the listed ones. Numeric children (Sequential indices) sort by value.
_CHILD_ORDER = (
    "conv_stem", "conv", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
    "downsample", "layer1", "layer2", "layer3", "layer4", "features",
    "stage2", "stage3", "stage4", "conv5", "blocks", "ghost1", "primary_conv",
    "cheap_operation", "conv_dw", "bn_dw", "se", "conv_reduce", "conv_expand",
    "ghost2", "shortcut", "branch1", "branch2", "conv_head", "classifier", "fc")
_CHILD_RANK = {n: i for i, n in enumerate(_CHILD_ORDER)}
_BN_KEYS = {"weight", "bias", "running_mean", "running_var"}


def _torch_modules(state: dict) -> list[tuple[str, str, dict]]:
  """[(prefix, kind, {leaf: array})] in registration order; kind is 'conv'
  (4-D weight), 'linear' (2-D weight) or 'bn' (running statistics)."""
  groups: dict[str, dict] = {}
  for key, value in state.items():
    prefix, _, leaf = key.rpartition(".")
    if leaf != "num_batches_tracked":  # a counter, not a weight
      groups.setdefault(prefix, {})[leaf] = value
  first_seen: dict[tuple, int] = {}
  for prefix in groups:
    parts = prefix.split(".")
    for i in range(len(parts)):
      first_seen.setdefault(tuple(parts[:i + 1]), len(first_seen))

  def order(prefix):
    parts = prefix.split(".")
    return [(0, int(p)) if p.isdigit() else
            (1, _CHILD_RANK[p]) if p in _CHILD_RANK else
            (2, first_seen[tuple(parts[:i + 1])])
            for i, p in enumerate(parts)]

  modules = []
  for prefix in sorted(groups, key=order):
    tensors = groups[prefix]
    weight = tensors.get("weight")
    if "running_mean" in tensors and set(tensors) == _BN_KEYS:
      kind = "bn"
    elif weight is not None and weight.ndim in (2, 4) and \
        set(tensors) <= {"weight", "bias"}:
      kind = "conv" if weight.ndim == 4 else "linear"
    else:
      raise WeightImportError(
          f"torch module {prefix!r} holds {', '.join(sorted(tensors))}: not a "
          "conv, linear or BatchNorm layer of the kd_jax zoo")
    modules.append((prefix, kind, tensors))
  return modules


@functools.lru_cache(maxsize=None)
def _flax_modules(name: str) -> tuple[tuple[tuple[str, ...], str], ...]:
  """((module path, kind), ...) of the model's Conv / Dense / BatchNorm layers
  in the order the forward pass calls them. Variable dicts from a jitted init
  are key-sorted, so the order comes from intercepting an abstract init; the
  class count changes no layer order, so 1000 stands for any."""
  kinds = ((nn.Conv, "conv"), (nn.Dense, "linear"), (nn.BatchNorm, "bn"))
  order: dict[tuple[str, ...], str] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
      for cls, kind in kinds:
        if isinstance(module, cls):
          order.setdefault(tuple(module.path), kind)  # first call only
    return next_fun(*args, **kwargs)

  model = zoo.get_model(name, num_classes=1000)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: zoo.init(model, jax.random.PRNGKey(0), 224))
  return tuple(order.items())


def _subtree(tree: dict, path: tuple[str, ...]) -> dict:
  for key in path:
    tree = tree[key]
  return tree


def _torch_to_flax(kind: str, tensors: dict) -> dict:
  """{(collection, leaf): array} of one torch module in kd_jax's layout."""
  if kind == "bn":
    return {("params", "scale"): tensors["weight"],
            ("params", "bias"): tensors["bias"],
            ("batch_stats", "mean"): tensors["running_mean"],
            ("batch_stats", "var"): tensors["running_var"]}
  weight = tensors["weight"]
  # conv OIHW -> HWIO (grouped: (kh, kw, in/groups, out), as flax keeps it);
  # linear (out, in) -> (in, out).
  kernel = weight.transpose(2, 3, 1, 0) if kind == "conv" else weight.T
  out = {("params", "kernel"): np.ascontiguousarray(kernel)}
  if "bias" in tensors:
    out[("params", "bias")] = tensors["bias"]
  return out


def _fit_error(name, prefix, torch_leaf, got, flax_path, flax_leaf, want,
               counts) -> str:
  where = "/".join(flax_path)
  return (f"{name}: torch tensor {prefix}.{torch_leaf} {tuple(got)} does not "
          f"fit kd_jax {where}/{flax_leaf} {tuple(want)}{counts}")


def _assign_module(name, variables, flax_path, prefix, kind, tensors,
                   counts) -> int:
  """Writes one torch module's tensors into `variables` (in place); returns
  the number of leaves written."""
  torch_leaf = {"scale": "weight", "mean": "running_mean",
                "var": "running_var", "kernel": "weight", "bias": "bias"}
  converted = _torch_to_flax(kind, tensors)
  want = {(collection, leaf) for collection in ("params", "batch_stats")
          for leaf in _leaves_at(variables.get(collection, {}), flax_path)}
  if set(converted) != want:  # e.g. a bias on one side only
    raise WeightImportError(
        f"{name}: torch module {prefix} ({', '.join(sorted(tensors))}) does "
        f"not fit kd_jax {'/'.join(flax_path)} "
        f"({', '.join(sorted(leaf for _, leaf in want))}){counts}")
  for (collection, leaf), value in converted.items():
    target = _subtree(variables[collection], flax_path)
    if value.shape != target[leaf].shape:
      source = torch_leaf[leaf]
      raise WeightImportError(_fit_error(
          name, prefix, source, tensors[source].shape, flax_path, leaf,
          target[leaf].shape, counts))
    target[leaf] = np.asarray(value, dtype=np.float32)
  return len(converted)


def _leaves_at(collection: dict, path: tuple[str, ...]) -> list[str]:
  try:
    return list(_subtree(collection, path))
  except KeyError:  # a module without variables in this collection
    return []


def _split_head(like, torch_mods, flax_mods):
  """(torch modules, kd_jax layers) left to pair, and whether the head
  (the last Dense) keeps its fresh initialisation: when the file has no
  classifier, or one with another class count over the same features."""
  head_path, head_kind = flax_mods[-1]
  if head_kind != "linear" or not torch_mods:
    return torch_mods, flax_mods, False
  prefix, kind, tensors = torch_mods[-1]
  if len(torch_mods) == len(flax_mods) - 1 and kind != "linear":
    return torch_mods, flax_mods[:-1], True  # a headless (features) file
  head_in, head_out = _subtree(like["params"], head_path)["kernel"].shape
  if len(torch_mods) == len(flax_mods) and kind == "linear" and \
      tensors["weight"].shape[1] == head_in and \
      tensors["weight"].shape[0] != head_out:
    return torch_mods[:-1], flax_mods[:-1], True
  return torch_mods, flax_mods, False


def assign_torch(name: str, like: dict, state: dict) -> tuple[dict, bool]:
  """(variables shaped like `like` holding `state`'s tensors, head reinit).

  `like`: the model's variables (numpy arrays, or jax.ShapeDtypeStructs).
  The torch modules (registration order) and the kd_jax layers (call order)
  are paired one to one; for every zoo model the two orders agree. The last
  linear layer is the classifier: with another class count than the model's
  (or absent from the file) it keeps `like`'s fresh initialisation."""
  all_flax = list(_flax_modules(name))
  torch_mods, flax_mods, reinit = _split_head(
      like, _torch_modules(state), all_flax)
  counts = "" if len(torch_mods) == len(flax_mods) else (
      f" (the file has {len(torch_mods)} conv/linear/BatchNorm layers, "
      f"{name} has {len(flax_mods)})")
  # Copies, so `like` stays as it was; `like` may hold jax.ShapeDtypeStructs
  # (then a reinitialised head stays one, for the caller to fill).
  variables = jax.tree.map(
      lambda a: a if isinstance(a, jax.ShapeDtypeStruct) else np.array(a),
      like)
  written = 0
  for (prefix, kind, tensors), (flax_path, flax_kind) in zip(torch_mods,
                                                             flax_mods):
    if kind != flax_kind:
      raise WeightImportError(
          f"{name}: torch module {prefix} is a {kind} layer where kd_jax has "
          f"the {flax_kind} layer {'/'.join(flax_path)}{counts}")
    written += _assign_module(name, variables, flax_path, prefix, kind,
                              tensors, counts)
  if counts:
    raise WeightImportError(
        f"{name}: the weight file does not fit the model{counts}")
  head = _subtree(like["params"], all_flax[-1][0]) if reinit else {}
  missing = len(jax.tree.leaves(like)) - written - len(jax.tree.leaves(head))
  if missing:  # a variable outside Conv / Dense / BatchNorm would stay fresh
    raise WeightImportError(
        f"{name}: {missing} model variables have no counterpart in the file")
  return variables, reinit
