"""Checkpoints: Orbax `CheckpointManager`s for one training stage.

A stage directory holds two managers:
  checkpoints/latest/<step>/  the full train state + loop position (resume);
                              kept: 1, written every `checkpoint_every_steps`
                              and at every epoch end.
  checkpoints/best/<step>/    the inference variables {params, batch_stats} of
                              the best validation epoch + model facts (meta).
                              This is what a later run loads as a teacher.
Each checkpoint is a `Composite` of an array item and a JSON `meta` item.
'latest' stores the train state packed: its leaves concatenated into one flat
array per dtype (item `packed_state`), because Orbax's cost is per array and a
train state has hundreds of leaves (measurements: benchmarks/RESULTS.md).
Its meta may carry the caller's stage `fingerprint` (what the stage trains);
a resume whose fingerprint differs is refused instead of silently continuing
another experiment's state.
Orbax writes into a temporary directory and renames it when complete, so an
interrupted save never replaces the previous checkpoint.
The frozen teacher is never part of a student's checkpoint.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from kd_jax import config_lib
from kd_jax.data import datasets as data
from kd_jax.errors import UserError


def _abstract(tree, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@jax.jit
def _pack(leaves):
  """{dtype name: 1-D array}: `leaves` raveled and concatenated per dtype."""
  groups = {}
  for x in leaves:
    groups.setdefault(jnp.dtype(x.dtype).name, []).append(jnp.ravel(x))
  return {k: jnp.concatenate(v) for k, v in groups.items()}


def _packed_like(specs, sharding):
  sizes = {}
  for shape, dtype in specs:
    sizes[dtype] = sizes.get(dtype, 0) + int(np.prod(shape))
  return {k: jax.ShapeDtypeStruct((n,), np.dtype(k), sharding=sharding)
          for k, n in sizes.items()}


def _key_name(k):
  for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, Sequence/Flattened
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _layout(tree) -> list:
  """[[path as a list of names, shape, dtype name], ...] of the leaves."""
  return [[[_key_name(k) for k in path], list(x.shape), jnp.dtype(x.dtype).name]
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _split(packed, specs):
  """The leaves of `specs` ((shape, dtype name)...) cut out of `packed`, in
  order: the inverse of `_pack`."""
  offsets = {}
  for shape, dtype in specs:
    o, n = offsets.get(dtype, 0), int(np.prod(shape))
    offsets[dtype] = o + n
    yield packed[dtype][o:o + n].reshape(shape)


@functools.lru_cache(maxsize=None)
def _unpack_fn(treedef, specs, sharding):
  """Jitted `packed -> tree` for leaves of `specs` ((shape, dtype name)...)."""
  return jax.jit(lambda packed: jax.tree.unflatten(
      treedef, list(_split(packed, specs))), out_shardings=sharding)


LAYOUT = "packed_layout"  # meta key of a packed state's leaf paths/shapes
FINGERPRINT = "fingerprint"  # meta key of the caller's stage fingerprint


def read_packed_state(manager_dir: str):
  """(step, state as nested dicts {name: ... array}) of the newest packed
  'latest' checkpoint in `manager_dir`, on the first device, without the
  config that wrote it (for inspection and tests)."""
  mngr = ocp.CheckpointManager(manager_dir)
  step = mngr.latest_step()
  layout = mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta[LAYOUT]
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  specs = [(tuple(shape), dtype) for _, shape, dtype in layout]
  packed = mngr.restore(step, args=ocp.args.Composite(
      packed_state=ocp.args.StandardRestore(_packed_like(specs, dev)))).packed_state
  mngr.close()
  tree = {}
  for (path, _, _), leaf in zip(layout, _split(packed, specs)):
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return step, tree


def latest_meta(stage_dir: str) -> dict | None:
  """The meta of a stage's 'latest' checkpoint (read only), or None."""
  root = os.path.join(stage_dir, "checkpoints", "latest")
  if not os.path.isdir(root):
    return None
  mngr = ocp.CheckpointManager(
      root, options=ocp.CheckpointManagerOptions(create=False))
  step = mngr.latest_step()
  meta = None if step is None else mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta
  mngr.close()
  return meta


class StageCheckpoints:
  """The 'latest' and 'best' managers of one stage directory."""

  def __init__(self, stage_dir: str):
    root = os.path.abspath(os.path.join(stage_dir, "checkpoints"))
    stage = os.path.basename(os.path.normpath(stage_dir))

    def manager(kind):
      # Synchronous saves (small models; a save is complete when it returns)
      # and a barrier namespace per manager: two managers saving the same
      # step number must not share multi-process barriers.
      opts = ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=f"{stage}_{kind}"))
      return ocp.CheckpointManager(os.path.join(root, kind), options=opts)

    self.latest = manager("latest")
    self.best = manager("best")

  def save_latest(self, step: int, state, meta: dict):
    self._save(self.latest, step, ocp.args.Composite(
        packed_state=ocp.args.StandardSave(_pack(jax.tree.leaves(state))),
        meta=ocp.args.JsonSave({**meta, LAYOUT: _layout(state)})))

  @staticmethod
  def _save(manager, step, args):
    """Orbax writes a step into a temporary directory and renames it when
    complete, then drops the older step: a failed or killed save leaves the
    previous checkpoint as it was. A failure (disk full, ...) becomes one
    line naming the step and the checkpoint that survives."""
    manager.wait_until_finished()
    if step in manager.all_steps():
      # A resumed run redoing a step that a killed run had already saved:
      # 'best' is written just before 'latest', so a kill between the two
      # leaves best/<step> ahead of the latest checkpoint. Orbax never
      # overwrites a step; this run's save replaces it.
      manager.delete(step)
    previous = manager.latest_step()
    try:
      manager.save(step, args=args, force=True)
    except Exception as e:  # OSError, or tensorstore's wrapping of one
      raise UserError(
          f"could not save the checkpoint of step {step} in {manager.directory}"
          f" ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else e!r}); "
          + (f"the previous checkpoint (step {previous}) is intact"
             if previous is not None else "no earlier checkpoint")) from None

  def restore_latest(self, like_state, sharding, fingerprint=None):
    """(state, meta) of the latest checkpoint, or None when there is none.

    When both the checkpoint's meta and the caller give a `fingerprint` and
    they differ, the checkpoint belongs to another stage setup and restoring
    it would continue the wrong experiment: that is a `UserError`. Neither the
    fingerprint nor the packed layout is part of the returned meta.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    leaves, treedef = jax.tree.flatten(like_state)
    specs = tuple((tuple(x.shape), jnp.dtype(x.dtype).name) for x in leaves)
    meta = self.latest.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    saved = meta.pop(FINGERPRINT, None)
    if saved is not None and fingerprint is not None and saved != fingerprint:
      raise UserError(
          f"the checkpoint of step {step} in {self.latest.directory} has stage "
          f"fingerprint {saved!r}, this config's is {fingerprint!r}; "
          "use another --workdir")
    if meta.pop(LAYOUT) != _layout(like_state):
      raise UserError(
          f"the checkpoint of step {step} in {self.latest.directory} holds a "
          "different train state (other model, method or optimizer) than "
          "this config builds; use another --workdir")
    out = self.latest.restore(step, args=ocp.args.Composite(
        packed_state=ocp.args.StandardRestore(_packed_like(specs, sharding))))
    return _unpack_fn(treedef, specs, sharding)(out.packed_state), meta

  def save_best(self, step: int, variables, meta: dict):
    self._save(self.best, step, ocp.args.Composite(
        model=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))

  def restore_best(self, like_variables, sharding):
    self.wait()
    return restore_model(self.best, like_variables, sharding)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def restore_model(manager, like_variables, sharding):
  step = manager.latest_step()  # 'best' keeps one checkpoint: the best one
  out = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(_abstract(like_variables, sharding)),
      meta=ocp.args.JsonRestore()))
  return out.model, out.meta


# A run workdir's stages, in the order a model is taken from it: a KD run's
# teacher, else the run's own model (`kd.method=none` trains `student/`).
RUN_STAGES = ("teacher", "student", "scratch")


def resolve_model_dir(path: str) -> str:
  """Accepts a run workdir, a stage dir, or the 'best' manager dir itself."""
  cands = [os.path.join(path, s, "checkpoints", "best") for s in RUN_STAGES]
  for cand in cands + [os.path.join(path, "checkpoints", "best"), path]:
    if os.path.isdir(cand) and any(n.isdigit() for n in os.listdir(cand)):
      return os.path.abspath(cand)
  raise UserError(f"no kd_jax model checkpoint in {path!r} (expected a run "
                  f"workdir with a {'/, '.join(RUN_STAGES)}/ stage, a stage "
                  "dir, or its checkpoints/best directory)")


def read_model_meta(path: str) -> tuple[ocp.CheckpointManager, dict]:
  model_dir = resolve_model_dir(path)
  manager = ocp.CheckpointManager(model_dir)
  step = manager.latest_step()
  try:
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
  except Exception as e:  # orbax raises several types on a foreign layout
    raise UserError(f"{model_dir} is not a kd_jax model checkpoint "
                    f"(cannot read its meta item: {type(e).__name__})") from None
  return manager, meta


def load_teacher(path: str, *, expected_model: str, num_classes: int,
                 image_size: int, like_variables, sharding, subclasses=1):
  """Restores frozen teacher variables, refusing a mismatched checkpoint."""
  manager, meta = read_model_meta(path)
  problems = []
  if meta.get("model") != expected_model:
    problems.append(f"architecture {meta.get('model')!r} (config.teacher.name "
                    f"is {expected_model!r})")
  if meta.get("num_classes") != num_classes:
    problems.append(f"{meta.get('num_classes')} classes (the data has "
                    f"{num_classes})")
  if meta.get("subclasses", 1) != subclasses:
    problems.append(f"{meta.get('subclasses', 1)} logits per class (this "
                    f"config needs {subclasses})")
  if meta.get("image_size") != image_size:
    problems.append(f"input {meta.get('image_size')}x{meta.get('image_size')}"
                    f" (config.dataset.image_size is {image_size})")
  if problems:
    raise UserError(f"teacher checkpoint {path} does not match: "
                    + "; ".join(problems))
  variables, _ = restore_model(manager, like_variables, sharding)
  manager.close()
  return variables, meta


def fingerprint(specs: config_lib.Specs, ds, role, model_name) -> str:
  """What a stage's 'latest' checkpoint belongs to: the config, the stage
  and the data. A resumed stage refuses another stage's checkpoint."""
  h = hashlib.blake2b(digest_size=8)
  cfg = json.loads(specs.config_json)
  h.update(json.dumps([cfg, role, model_name], sort_keys=True).encode())
  stage_ds = data.stage_data(ds, role, specs.data.transfer_limit)
  h.update(data.digest(stage_ds).encode())
  return h.hexdigest()


def check_resumable(workdir, specs: config_lib.Specs, ds):
  """Refuses, before anything is written, a workdir whose unfinished stages
  hold 'latest' checkpoints of another config or data (a run whose
  checkpoints outlived its deleted workdir). Several processes check
  together and wait for each other, so that none looks at a stage directory
  another one has already started writing."""
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else ():
    stage_dir = os.path.join(workdir, name)
    if os.path.exists(os.path.join(stage_dir, "results.json")):
      continue
    meta = latest_meta(stage_dir)
    if not meta or "fingerprint" not in meta:
      continue
    mine = fingerprint(specs, ds, meta["role"], meta["model"])
    if meta["fingerprint"] != mine:
      raise UserError(
          f"{stage_dir}/checkpoints/latest belongs to another run (stage "
          f"fingerprint {meta['fingerprint']!r}, this config's is {mine!r}); "
          "use another --workdir")
  if jax.process_count() > 1:
      multihost_utils.sync_global_devices("kd_jax_check_resumable")
