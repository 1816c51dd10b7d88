"""Teacher logits computed elsewhere (`config.teacher.logits`): a team whose
teacher stays in PyTorch distils without converting it.

The file is an `.npz` with, per split of the source (`train`, `val`,
`test`; a split may be left out when another one holds its examples):
  image folders:     `<split>_paths`   str [N], relative to dataset.data_dir
                     (e.g. 'train/A2C/v1_0003.png'), and `<split>_logits`
                     float [N, C];
  in-memory sources: `<split>_indices` int [N], the example's index in the
                     source's own `train` or `test` split (kd_jax's val is
                     held out of `train`, so its examples are looked up
                     there), and `<split>_logits`.
Each of kd_jax's splits gets its rows by path (or index): the run then uses
the teacher-cache path (`teacher_logits` in every batch) and runs no teacher
forward pass at all.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from kd_jax import metrics
from kd_jax.data import datasets as data
from kd_jax.errors import UserError

SPLITS = ("train", "val", "test")


def _read(path) -> dict:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise UserError(f"config.teacher.logits={path!r} is not a readable .npz "
                    f"file ({type(e).__name__})") from None


def _table(arrays, path, kind) -> dict:
  """{path or (source split, index): logits row} over the file's splits."""
  table = {}
  for split in SPLITS:
    keys, logits = arrays.get(f"{split}_{kind}"), arrays.get(f"{split}_logits")
    if keys is None:
      continue
    if logits is None or len(logits) != len(keys) or logits.ndim != 2:
      raise UserError(f"{path}: {split}_{kind} needs a {split}_logits array "
                      f"of shape [{len(keys)}, classes]")
    source = "test" if split == "test" else "train"
    for key, row in zip(keys, logits.astype(np.float32)):
      table[os.path.normpath(str(key)) if kind == "paths" else
            (source, int(key))] = row
  if not table:
    raise UserError(f"{path} has no <split>_{kind} arrays (allowed splits: "
                    f"{', '.join(SPLITS)}); see kd_jax/teacher_logits.py")
  return table


def _keys(config, split: data.Split, name) -> list:
  if split.paths is not None:
    root = config.dataset.data_dir
    return [os.path.normpath(os.path.relpath(p, root)) for p in split.paths]
  return [("test" if name == "test" else "train", int(i))
          for i in split.index]


def attach(config, ds: data.Dataset) -> data.Dataset:
  """`ds` with every split's teacher logits from `config.teacher.logits`."""
  path = config.teacher.logits
  arrays = _read(path)
  kind = "paths" if ds.train.paths is not None else "indices"
  table = _table(arrays, path, kind)
  widths = {len(r) for r in table.values()}
  if widths != {ds.num_classes}:
    raise UserError(f"{path}: logits have {sorted(widths)} columns; the data "
                    f"has {ds.num_classes} classes")
  splits, used = {}, set()
  for name in SPLITS:
    split = getattr(ds, name)
    keys = _keys(config, split, name)
    missing = [k for k in keys if k not in table]
    if missing:
      raise UserError(f"{path}: {len(missing)} of the {len(keys)} {name} "
                      f"examples have no logits, the first: {missing[0]}")
    used.update(keys)
    splits[name] = dataclasses.replace(
        split, teacher_logits=np.stack([table[k] for k in keys]))
  extra = [k for k in table if k not in used]
  if config.dataset.train_limit or config.dataset.eval_limit:
    # The limits leave examples out on purpose; a path that is no file of
    # the data folder is still wrong.
    extra = [k for k in extra if isinstance(k, str) and not os.path.isfile(
        os.path.join(config.dataset.data_dir, k))]
  if extra:
    raise UserError(f"{path}: {len(extra)} logits match no example of the "
                    f"data, the first: {extra[0]}")
  return dataclasses.replace(ds, **splits)


def evaluate(split: data.Split, has_teacher=False) -> dict:
  """The logits' own test metrics (the teacher row of the run table)."""
  m = metrics.EvalMetrics.single_from_model_output(
      logits=split.teacher_logits, labels=split.labels,
      mask=np.ones(len(split), np.float32),
      loss=_cross_entropy(split.teacher_logits, split.labels),
      agree=np.zeros(len(split), np.float32),
      probs=np.exp(_log_softmax(split.teacher_logits)))
  return metrics.summarize(m, has_teacher)


def _log_softmax(logits_NxC):
  z = logits_NxC - logits_NxC.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _cross_entropy(logits_NxC, labels_N):
  return -_log_softmax(logits_NxC)[np.arange(len(labels_N)), labels_N]
