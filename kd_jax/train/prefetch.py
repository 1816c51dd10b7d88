"""Input prefetching: the next batches are assembled on the host and put on
the devices by a background thread while the current step runs.

`Prefetcher(host_batches, put, depth)` is an iterator over `put(batch)` for
each host batch, in order. With `depth` >= 1 a producer thread runs the host
iterator (numpy gathers, tf.data decoding, cached teacher logits) and `put`
(`sharding.global_batch`: this process's rows -> global arrays sharded over
the mesh, the host -> device copy started), and keeps at most `depth`
placed batches waiting in a bounded queue, plus the one it is placing.
Each process prefetches only its own rows: the host iterator yields them
and `put` assembles the global array from them without any collective. The
values are the ones the synchronous path computes, so a run gives the same
bits with and without prefetching.

With `depth` 0 nothing runs in the background: each batch is assembled and
placed when the consumer asks for it (the synchronous path).

The iterator is a context manager: leaving the `with` block early (early
stopping, a preemption save, an exception) stops the producer, closes the
host iterator in the producer's thread and joins it, so no thread outlives
the loop. An exception in the producer is raised in the consumer, at the
batch where it happened.
"""
from __future__ import annotations

import queue
import threading

import jax
import numpy as np

from kd_jax.errors import UserError

_DONE = object()  # the producer's last item: the host iterator is exhausted
_POLL_S = 0.05  # how often a blocked producer looks whether it must stop


class _Raised:
  """An exception of the producer, carried to the consumer."""

  def __init__(self, error):
    self.error = error


def batch_bytes(batch) -> int:
  """Host bytes of one batch (a dict of arrays)."""
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(batch)))


def available_bytes() -> int | None:
  """The host memory available to new allocations (Linux MemAvailable), or
  None where it cannot be read."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_memory(nbytes: int, depth: int, available: int | None) -> None:
  """Refuses a prefetch depth whose batches (`depth` waiting, one being
  placed) would take over half the available host memory; on CPU devices
  the placed batches are host memory too."""
  held = nbytes * (depth + 1)
  if available is not None and held > available // 2:
    raise UserError(
        f"config.prefetch_depth={depth} holds {depth + 1} batches of "
        f"{nbytes / 1e6:.1f} MB ({held / 1e9:.2f} GB), over half the "
        f"{available / 1e9:.2f} GB of host memory available; lower it (0: no "
        "prefetching) or the batch size")


class Prefetcher:
  """`put(b)` for each `b` of `host_batches`, up to `depth` placed ahead by
  a background thread (module docstring)."""

  def __init__(self, host_batches, put, depth: int):
    if depth < 0:
      raise ValueError(f"prefetch depth {depth} must be >= 0")
    self._source, self._put, self._depth = iter(host_batches), put, depth
    self._stop = threading.Event()
    self._queue = queue.Queue(maxsize=max(depth, 1))
    self._thread = None
    self._finished = False
    if depth:
      self._thread = threading.Thread(target=self._produce, daemon=True,
                                      name="kd_jax-prefetch")
      self._thread.start()

  def _offer(self, item) -> bool:
    """Puts `item` on the queue unless the consumer has stopped."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self):
    checked = False
    try:
      for host_batch in self._source:
        if self._stop.is_set():
          return
        if not checked:
          check_memory(batch_bytes(host_batch), self._depth, available_bytes())
          checked = True
        if not self._offer(self._put(host_batch)):
          return
      self._offer(_DONE)
    except BaseException as e:  # noqa: BLE001  (raised in the consumer)
      self._offer(_Raised(e))
    finally:
      close = getattr(self._source, "close", None)
      if close is not None:  # a generator closes in the thread that ran it
        close()

  def __iter__(self):
    return self

  def __next__(self):
    if self._finished:
      raise StopIteration
    if self._thread is None:
      try:
        return self._put(next(self._source))
      except StopIteration:
        self._finished = True
        raise
    item = self._queue.get()
    if item is _DONE or isinstance(item, _Raised):
      self._finished = True
      self.close()
      if item is _DONE:
        raise StopIteration
      raise item.error
    return item

  def close(self):
    """Stops the producer and waits for its thread to end."""
    self._finished = True
    if self._thread is None:
      close = getattr(self._source, "close", None)
      if close is not None:
        close()
      return
    self._stop.set()
    while self._thread.is_alive():
      try:  # a producer blocked on a full queue takes a free slot and stops
        self._queue.get_nowait()
      except queue.Empty:
        pass
      self._thread.join(_POLL_S)
    while not self._queue.empty():  # drops placed batches nobody will use
      self._queue.get_nowait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False



def fetched_one_behind(dispatched, fetch):
  """`fetch(y)` for each `y` of `dispatched` (an iterator that dispatches
  device work as it advances), each fetched only once the next one is
  dispatched: the device computes the next batch while the host waits for
  and copies this one, and at most two batches' outputs are in flight."""
  last, have = None, False
  for y in dispatched:
    if have:
      yield fetch(last)
    last, have = y, True
  if have:
    yield fetch(last)
