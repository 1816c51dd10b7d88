"""kd_jax: knowledge distillation of image classifiers in JAX/Flax."""
from kd_jax import cpu_runtime

# XLA:CPU flags and host-memory reuse, set before JAX starts its CPU backend
# (see kd_jax/cpu_runtime.py; whatever the user set themselves is kept).
HOST_MEMORY_REUSE = cpu_runtime.configure()
