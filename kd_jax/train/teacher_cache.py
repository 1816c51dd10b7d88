"""Teacher-output cache: the frozen teacher's logits (and a FitNets hint
feature), computed once per split.

When the teacher sees the same input for an example in every epoch (no random
crop/flip), its logits and features are a fixed function of
the example: compute them once and reuse them across epochs, students and
study cells. Files: `<cache_dir>/<key>/{train,val,test}.npy` (float32
`[N, K]`, row i = example i of the split) + `meta.json`, written atomically;
with a hint layer also `train.hint-<layer>.npy` (`[N, h, w, c]`, read as a
memory map: mind the disk, e.g. 10k examples of a 28x28x256 map = 8 GB).
The key hashes everything the logits depend on: the teacher's variables
(content, not path), its architecture and logits per class, the split's
examples (pixels for in-memory data; paths, sizes and mtimes for image
folders, with the geometry they are decoded to), the preprocessing (image
size, normalisation) and the teacher's compute dtype
(`teacher.compute_dtype`). Any change gives a new key, so a stale cache is
never read.

With augmentation (pad or random-resized crop, flip, mixup/CutMix) the
teacher's input changes every epoch, but a seeded augmentation makes batch s
of epoch e the same crops, flips and mixes of the same examples in every run
with the same data seed: the teacher's logits of the augmented batches
(`AugmentedViews`, keyed also by the crop's and the mix's settings) are then
a fixed function of (epoch, batch), computed by the first run that reaches
an epoch and read by every other (a study's cells of one seed: other
methods, students, hyperparameters). Files:
`<cache_dir>/views-<key>/epoch-<e>.npy` (float32 `[steps per epoch, batch,
K]`; CIFAR-100 at batch 64: 20 MB per epoch).
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from kd_jax import config_lib
from kd_jax import models
from kd_jax import reporting
from kd_jax.data import datasets as data
from kd_jax.train import prefetch
from kd_jax.train import sharding
from kd_jax.train import step as step_lib

SPLITS = ("train", "val", "test")


def usable(specs: config_lib.Specs) -> tuple[bool, str]:
  """(can the teacher's logits be cached for this run, why not)."""
  if not specs.teacher.cache_dir:
    return False, "off"
  if specs.data.augments:
    return False, "augmentation changes the teacher's input every epoch"
  return True, ""


def _hash_tree(h, tree):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf))).tobytes())


def _geometry_key(d: config_lib.DataSpec) -> dict:
  """The splits' stored geometry (data/transforms.storage) where it is not
  the plain resize: image files are hashed by path, size and mtime, not by
  their decoded pixels, so the key names how they are decoded. Empty by
  default, so the keys of existing caches stay as they were."""
  fields = {}
  if d.train_transform == "random_resized_crop":
    fields["train_source_size"] = d.train_source_size
  if d.eval_transform != "resize":
    fields.update(eval_transform=d.eval_transform,
                  eval_resize_size=d.eval_resize_size)
  return fields


def cache_key(specs: config_lib.Specs, ds, teacher_name, teacher) -> str:
  h = hashlib.blake2b(digest_size=16)
  fields = {
      "teacher": teacher_name, "subclasses": teacher.subclasses,
      "image_size": specs.data.image_size,
      "normalization": specs.data.normalization,
  }
  # Named only when bf16, so float32 keys stay as they were and existing
  # caches still hit.
  if specs.run.teacher_bf16:
    fields["compute_dtype"] = specs.teacher.compute_dtype
  fields.update(_geometry_key(specs.data))
  h.update(json.dumps(fields, sort_keys=True).encode())
  _hash_tree(h, teacher.variables)
  for name in SPLITS:
    h.update(name.encode())
    data.hash_split(h, getattr(ds, name))
  return h.hexdigest()


def _over_split(specs, fn, variables, split, mesh) -> np.ndarray:
  """`fn(variables, preprocessed images)` for every example of `split`, in
  order, as float32 (jitted, over evaluation batches; in bfloat16 with
  `teacher.compute_dtype=bfloat16`, as the live teacher runs)."""
  def fwd(variables, images):
    x = data.preprocess(images, image_size=specs.data.image_size,
                        normalization=specs.data.normalization)
    return step_lib.frozen_forward(fn, variables, x, specs.run.teacher_bf16)
  fwd_jit = jax.jit(fwd)
  gather = lambda y: np.asarray(multihost_utils.process_allgather(y, tiled=True))
  host_batches = data.eval_batches(
      split, global_batch=specs.data.eval_batch_size,
      image_size=specs.data.image_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  with prefetch.Prefetcher(
      host_batches, lambda b: sharding.global_batch(b["image"], mesh),
      specs.data.prefetch_depth) as placed:
    out = list(prefetch.fetched_one_behind(
        (fwd_jit(variables, batch) for batch in placed), gather))
  return np.concatenate(out)[:len(split)].astype(np.float32)


def compute_logits(specs: config_lib.Specs, teacher, split,
                   mesh) -> np.ndarray:
  """The teacher's logits for every example of `split`, in order."""
  return _over_split(specs, lambda v, x: teacher.model.apply(v, x, train=False),
                     teacher.variables, split, mesh)


def compute_features(specs: config_lib.Specs, teacher, split, mesh,
                     layer) -> np.ndarray:
  """The teacher's feature `layer` (a FitNets hint) for every example."""
  return _over_split(specs, lambda v, x: models.apply_with_features(
      teacher.model, v, x, train=False)[1][layer], teacher.variables, split, mesh)


def load_or_compute_features(specs: config_lib.Specs, ds, teacher_name,
                             teacher, mesh, layer) -> np.ndarray:
  """The training split's hint features [N, h, w, c], cached beside the
  logits (same key) as `train.hint-<layer>.npy` and read as a memory map."""
  key = cache_key(specs, ds, teacher_name, teacher)
  root = os.path.join(specs.teacher.cache_dir, key)
  path = os.path.join(root, f"train.hint-{layer}.npy")
  if os.path.exists(path):
    arr = np.load(path, mmap_mode="r")
    if arr.shape[0] == len(ds.train):
      reporting.log(f"teacher cache {path}: hit")
      return arr
  feats = compute_features(specs, teacher, ds.train, mesh, layer)
  if jax.process_index() == 0:
    reporting.write_atomic(path, lambda f: np.save(f, feats))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("kd_jax_hint_cache")
  reporting.log(f"teacher cache {path}: computed ({feats.nbytes / 1e6:.1f} MB)")
  return feats


def load_or_compute(specs: config_lib.Specs, ds, teacher_name, teacher,
                    mesh, splits=SPLITS) -> dict:
  """{split name: logits [N, K]} of `splits` from the cache, computing what
  is missing."""
  key = cache_key(specs, ds, teacher_name, teacher)
  root = os.path.join(specs.teacher.cache_dir, key)
  out, computed = {}, []
  for name in splits:
    path = os.path.join(root, name + ".npy")
    split = getattr(ds, name)
    if os.path.exists(path):
      arr = np.load(path)
      if arr.shape[0] == len(split):
        out[name] = arr
        continue
    out[name] = compute_logits(specs, teacher, split, mesh)
    computed.append(name)
    if jax.process_index() == 0:
      reporting.write_atomic(path, lambda f, a=out[name]: np.save(f, a))
  if computed and jax.process_index() == 0:
    reporting.write_json(os.path.join(root, "meta.json"), {
        "teacher": teacher_name, "teacher_checkpoint": teacher.path,
        "dataset": ds.name, "image_size": specs.data.image_size,
        "normalization": specs.data.normalization,
        "compute_dtype": specs.teacher.compute_dtype,
        "splits": {n: list(out[n].shape) for n in splits}})
  reporting.log(f"teacher cache {root}: "
                + (f"computed {', '.join(computed)}" if computed else "hit"))
  return out


def views_problem(specs: config_lib.Specs, live="") -> str | None:
  """Why a run does not cache its teacher's logits of augmented batches
  (None: it does); `live`: why the run needs its teacher live anyway."""
  if not specs.teacher.cache_dir:
    return "off"
  if not specs.data.augments:
    return "no augmentation: the per-example cache serves the run"
  if live:
    return live
  if jax.process_count() > 1:
    return "several processes (each would need its own rows of every view)"
  return None


def _crop_key(d: config_lib.DataSpec) -> dict:
  """The crop fields of a views key. 'pad_crop' is keyed as random_crop
  (the same views, so they share a cache); the random-resized crop's
  fields appear only with it, so the keys of other views stay as they
  were."""
  fields = {"random_crop": d.train_transform == "pad_crop",
            "crop_padding": d.crop_padding}
  if d.train_transform == "random_resized_crop":
    fields.update(train_transform=d.train_transform,
                  rrc_scale=list(d.rrc_scale), rrc_ratio=list(d.rrc_ratio))
  return fields


def _mixing_key(d: config_lib.DataSpec) -> dict:
  """The mixing fields of a views key; none without mixing, so the keys of
  unmixed views (and their caches) stay as they were."""
  if not d.mixes:
    return {}
  return {"mixup_alpha": d.mixup_alpha, "cutmix_alpha": d.cutmix_alpha,
          "mix_ratio": d.mix_ratio, "mix_partner": d.mix_partner}


class AugmentedViews:
  """The frozen teacher's logits of every augmented training batch of a run,
  one file per epoch, computed the first time any run reaches that epoch."""

  def __init__(self, specs: config_lib.Specs, ds, teacher,
               spec: step_lib.StepSpec, spe, mesh):
    self.data, self.ds, self.teacher, self.spe, self.mesh = (
        specs.data, ds, teacher, spe, mesh)
    self.spec = spec
    d = specs.data
    h = hashlib.blake2b(digest_size=16)
    h.update(cache_key(specs, ds, type(teacher.model).__name__,
                       teacher).encode())
    h.update(json.dumps({
        "data_seed": spec.data_seed, "batch_size": d.batch_size,
        "steps_per_epoch": spe, "balanced": d.balanced_sampling,
        "random_flip": d.random_flip, **_crop_key(d),
        "mixed_precision": specs.run.mixed_precision, **_mixing_key(d)},
        sort_keys=True).encode())
    self.root = os.path.join(specs.teacher.cache_dir, "views-" + h.hexdigest())
    self._fn = step_lib.make_live_teacher_fn(spec)
    self._epoch, self._logits = -1, None

  def logits(self, epoch, step_in_epoch) -> np.ndarray:
    """`[batch, K]`: the teacher's logits of batch `step_in_epoch` of
    `epoch`, augmented as the train step augments it."""
    if epoch != self._epoch:
      self._logits, self._epoch = self._load_or_compute(epoch), epoch
    return np.asarray(self._logits[step_in_epoch])

  def attach(self, batches, epoch, start_step, global_step):
    """`batches` (host batches `start_step`, ... of `epoch`) with their
    cached teacher logits; `global_step`: the train step of the first one,
    which must augment it as the cached view was augmented."""
    if global_step != epoch * self.spe + start_step:
      raise RuntimeError(
          f"train step {global_step} is not batch {start_step} of epoch "
          f"{epoch} ({self.spe} steps per epoch): the cached augmented views "
          f"would not match the step's augmentation")
    for s, host_batch in enumerate(batches, start_step):
      host_batch["teacher_logits"] = self.logits(epoch, s)
      yield host_batch

  def _load_or_compute(self, epoch) -> np.ndarray:
    path = os.path.join(self.root, f"epoch-{epoch}.npy")
    if os.path.exists(path):
      arr = np.load(path, mmap_mode="r")
      if arr.shape[:2] == (self.spe, self.data.batch_size):
        return arr
    host_batches = data.train_batches(
        self.ds.train, global_batch=self.data.batch_size,
        seed=self.spec.data_seed, epoch=epoch, num_steps=self.spe,
        image_size=self.data.image_size,
        balanced=self.data.balanced_sampling)
    with prefetch.Prefetcher(
        host_batches, lambda b: sharding.global_batch(b["image"], self.mesh),
        self.data.prefetch_depth) as placed:
      out = list(prefetch.fetched_one_behind(
          (self._fn(self.teacher.variables, images,
                    jnp.int32(epoch * self.spe + s))
           for s, images in enumerate(placed)), np.asarray))
    arr = np.stack(out).astype(np.float32)
    reporting.write_atomic(path, lambda f: np.save(f, arr))
    if epoch == 0:
      reporting.log(f"teacher cache {self.root}: augmented batches' logits, "
                    f"one file per epoch ({arr.nbytes / 1e6:.1f} MB each)")
    return arr


def augmented_views(specs: config_lib.Specs, ds, teacher, spec, spe, mesh,
                    role, live="") -> AugmentedViews | None:
  """The run's `AugmentedViews`, or None (logged unless the cache is off)."""
  if teacher is None:
    return None
  why = views_problem(specs, live)
  if why is None:
    return AugmentedViews(specs, ds, teacher, spec, spe, mesh)
  if why != "off" and not why.startswith("no augmentation"):
    reporting.log(f"[{role}] augmented batches' teacher logits not cached: {why}")
  return None
