"""Data: sources, batches and files of teacher logits.

Owns: `datasets` (embedded, TFDS, image folders, CSV sets; splits,
transfer sets, batching, preprocessing), `mixing` (mixup and CutMix of a
training batch, on the device), `teacher_logits` (a teacher's
logits read from a file) and `prepare` (videos and image folders cut into
patient-split frame folders).

May import: kd_jax.errors, kd_jax.metrics, numpy, TensorFlow (late: start
up time) and PyAV. Nothing that trains.
"""
from kd_jax.data.datasets import Dataset, Split, load  # noqa: F401  (public)
