"""The epoch loop, written once: a single run's stage (`stage.Stage`) and a
sweep's K vmapped cells (`sweep`) both drive it through a stepper.

A stepper holds the train state(s) and everything around the step:
  loop                  the position dict (`new_loop`): epoch,
                        step_in_epoch, stopped, train_seconds, ...
  finished(num_epochs)  whether no epoch is left to train
  begin_epoch()         called before each epoch's first batch
  put(host_batch)       the batch on the devices (this process's rows ->
                        global arrays over the mesh); runs in the prefetch
                        thread (`prefetch.Prefetcher`)
  step(batch, step)     one train step on a placed batch (`step`: the
                        global step before it); returns the step's device
                        metrics, not waiting for them, and advances
                        loop['step_in_epoch']
  flush(pending, step)  fetches and writes the metrics of the steps up to
                        `step` (the only place the loop waits for the device)
  add_seconds(s)        adds training wall time
  save_latest(step)     writes the 'latest' checkpoint(s)
  wait()                waits for checkpoint writes and flushes writers
  end_epoch(step)       validation, early stopping, best checkpoints, log
  preempted_message(step)  the line a SIGTERM leaves
"""
from __future__ import annotations

import time

from kd_jax.train import prefetch
from kd_jax.train import preemption


def new_loop() -> dict:
  return {"epoch": 0, "step_in_epoch": 0, "best_val": -1.0, "best_epoch": -1,
          "bad_epochs": 0, "history": [], "train_seconds": 0.0,
          "stopped": False}


def mid_epoch_save_due(every, loop, step, steps_per_epoch) -> bool:
  """A 'latest' checkpoint every `every` steps (config.
  checkpoint_every_steps; 0: none) inside an epoch (the epoch end saves
  one anyway)."""
  return bool(loop["step_in_epoch"] < steps_per_epoch and every
              and step % every == 0)


def run_epochs(stepper, batches, *, step, num_epochs, steps_per_epoch,
               log_every, checkpoint_every, prefetch_depth) -> int:
  """Trains until `num_epochs` are done or the stepper stops; returns the
  global step. `batches(epoch, start_step, step)` gives an epoch's host
  batches from `start_step` on (`step`: the global step of the first);
  `prefetch_depth` of them are placed on the devices ahead of the step.
  A SIGTERM (preemption) saves the latest checkpoint and raises
  `preemption.Preempted`."""
  loop = stepper.loop
  while not stepper.finished(num_epochs):
    stepper.begin_epoch()
    pending, t_epoch = [], time.time()
    with prefetch.Prefetcher(
        batches(loop["epoch"], loop["step_in_epoch"], step), stepper.put,
        prefetch_depth) as placed:
      for batch in placed:
        pending.append(stepper.step(batch, step))
        step += 1
        if len(pending) >= log_every:
          stepper.flush(pending, step)
          pending = []
        if preemption.requested(step, log_every):
          stepper.add_seconds(time.time() - t_epoch)
          if pending:
            stepper.flush(pending, step)
          stepper.save_latest(step)
          stepper.wait()
          raise preemption.Preempted(stepper.preempted_message(step))
        if mid_epoch_save_due(checkpoint_every, loop, step, steps_per_epoch):
          stepper.add_seconds(time.time() - t_epoch)
          t_epoch = time.time()
          stepper.save_latest(step)
    if pending:
      stepper.flush(pending, step)
    stepper.add_seconds(time.time() - t_epoch)
    stepper.end_epoch(step)
  return step
