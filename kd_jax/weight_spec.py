"""Weight-file specs: which framework a file comes from and what input
normalisation its weights expect (JAX-free: config validation reads it).

A spec is `SOURCE:PATH` (SOURCE one of `SOURCES`), a path whose suffix
names the framework, or a kd_jax run's workdir / checkpoint.
"""
from __future__ import annotations

import os

SOURCES = ("torchvision", "timm", "keras")
# The normalisation (a key of data.NORMALIZATION) each source's models were
# trained with: ImageNet mean/std for torchvision and timm, [-1, 1] for Keras.
NORMALIZATION = {"torchvision": "imagenet", "timm": "imagenet", "keras": "half"}
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
KERAS_SUFFIXES = (".h5", ".keras", ".hdf5")
# "1": a .pth holding a whole pickled torch model may be unpickled (set by
# `kd_jax.main --trust_pickle`, inherited by a study's cell processes); it
# runs code the file names, so only on the user's word.
TRUST_PICKLE_ENV = "KD_JAX_TRUST_PICKLE"


class WeightImportError(ValueError):
  """A weight file that cannot be read or does not fit the model (one line)."""


def infer_source(path: str) -> str:
  """'keras' for HDF5 / .keras files; 'torchvision' for torch state dicts
  (torchvision and timm files share a layout; the model name decides)."""
  lower = path.lower()
  if lower.endswith(KERAS_SUFFIXES):
    return "keras"
  if lower.endswith(TORCH_SUFFIXES):
    return "torchvision"
  raise WeightImportError(
      f"cannot tell the framework of {path!r} from its name; allowed: "
      f"{', '.join(TORCH_SUFFIXES + KERAS_SUFFIXES)} files, or give the "
      "source (torchvision:PATH, timm:PATH, keras:PATH)")


def parse_spec(spec: str) -> tuple[str | None, str]:
  """'torchvision:PATH' -> ('torchvision', PATH); a plain path -> (None, PATH)."""
  head, sep, rest = spec.partition(":")
  if sep and head in SOURCES:
    return head, rest
  return None, spec


def foreign_source(spec: str) -> str | None:
  """The framework of a foreign weight file spec, or None for a kd_jax run."""
  if not spec:
    return None
  source, path = parse_spec(spec)
  if source is not None:
    return source
  if os.path.isfile(path) and path.lower().endswith(
      TORCH_SUFFIXES + KERAS_SUFFIXES):
    return infer_source(path)
  return None


def normalization(spec: str) -> str | None:
  """The input normalisation the weights of `spec` were trained with
  (None: a kd_jax run, whose config says it)."""
  source = foreign_source(spec)
  return NORMALIZATION[source] if source else None
