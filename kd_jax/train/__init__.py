"""Training: the pure step, the epoch loop, the stage pipeline, sweeps.

Owns: `step` (the jitted train and eval steps; no I/O), `stage` (one
model's training: its loop, evaluation, checkpoints), `pipeline`
(`train_and_evaluate`: teacher, scratch, assistants, hints, student),
`sweep` (cells trained together under jax.vmap), `checkpointing` (Orbax),
`sharding` (the ('data',) mesh), `prefetch` (the next batches placed on the
devices by a background thread), `preemption`, `pretrained` (a teacher or
student started from a checkpoint or imported weights), `precise_bn`
(BatchNorm statistics recomputed before evaluation) and `teacher_cache`
(the frozen teacher's logits, computed once).

May import: kd_jax.distill, kd_jax.config_lib, kd_jax.models, kd_jax.data
and the leaves (errors, console, cpu_runtime, metrics, reporting).
"""
from kd_jax.train.pipeline import train_and_evaluate  # noqa: F401  (public)
