"""Data: sources, batches and files of teacher logits.

Owns: `datasets` (embedded, TFDS, image folders, CSV sets; splits,
transfer sets, batching, preprocessing), `tfds_source` (TFDS datasets by
name: opened, held in memory or read row by row), `transforms` (an image's stored
geometry, on the host), `decode` (image files decoded in a thread pool,
validated as batches read them), `decoded_cache` (a folder's splits decoded
once into memory-mapped arrays), `augment` (pad crop and random-resized crop of a
training batch, on the device), `mixing` (mixup and CutMix of a
training batch, on the device), `teacher_logits` (a teacher's
logits read from a file) and `prepare` (videos and image folders cut into
patient-split frame folders).

May import: kd_jax.errors, kd_jax.metrics, numpy, Pillow, TensorFlow (late:
start up time) and PyAV. Nothing that trains.
"""
from kd_jax.data.datasets import Dataset, Split, load  # noqa: F401  (public)
