"""SIGTERM handling: SLURM sends SIGTERM before it kills a job, so a stage
finishes its step, saves its latest checkpoint and exits; rerunning the same
command resumes."""
from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils
import numpy as np


class Preempted(Exception):
  """SIGTERM arrived; the stage saved its latest checkpoint."""


_SIGTERM = {"received": False}


def _on_sigterm(signum, frame):
  del signum, frame
  _SIGTERM["received"] = True


def install_sigterm_handler():
  try:
    signal.signal(signal.SIGTERM, _on_sigterm)
  except ValueError:  # not the main thread: leave the default handler
    pass


def requested(step, every) -> bool:
  """Whether to stop now. Several processes must agree (they save
  together), so they compare flags every `every` steps."""
  if jax.process_count() == 1:
    return _SIGTERM["received"]
  if step % max(1, every):
    return False
  flags = multihost_utils.process_allgather(
      np.asarray([_SIGTERM["received"]], np.int32))
  return bool(np.any(flags))
