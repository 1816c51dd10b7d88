"""kd_jax: knowledge distillation of image classifiers in JAX/Flax.

Importing kd_jax leaves the process as it is. Its commands (`python -m
kd_jax.main`, `.study`, `.export`, `.predict`, `.report`) set it up
themselves: kd_jax/console.py (no native-library log lines) and
`cpu_runtime.configure()` (XLA:CPU flags and host-memory reuse), which a
notebook or script that trains calls itself before JAX starts a backend.
"""
# Notes the user's log settings before a kd_jax module imports JAX; changes
# nothing.
from kd_jax import console  # noqa: F401
