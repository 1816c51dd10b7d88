"""Deployment: exported students and what runs them.

Owns: `export` (a run's student as a SavedModel or TFLite file), `tflite`
(conversion and the TFLite interpreter) and `predict` (classify images
and videos with an exported file; imports neither Flax nor the training
code).

May import: kd_jax.train, kd_jax.models, kd_jax.data and the leaves.
"""
