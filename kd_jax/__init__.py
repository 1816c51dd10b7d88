"""kd_jax: knowledge distillation of image classifiers in JAX/Flax."""
import os

# XLA:CPU options kd_jax runs with, added to XLA_FLAGS on import (before JAX
# starts its CPU backend; a flag already named in XLA_FLAGS is left as the
# user set it). They only concern the CPU backend.
#   --xla_cpu_experimental_ynn_fusion_type= : no YNNPACK fusions. With them
#     on (this jaxlib's default) the KD steps of benchmarks/kd_step_vs_torch.py
#     ran 10-30% slower on the project's CPU (VGG16 forward at 112 px,
#     batch 64: 2.2-2.4 s with, 1.8 s without; simple_cnn's update 107 vs
#     92 ms; see benchmarks/RESULTS.md).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _add_cpu_xla_flags(environ=os.environ):
  flags = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=", 1)[0] for f in flags}
  for flag in CPU_XLA_FLAGS:
    if flag.split("=", 1)[0] not in names:
      flags.append(flag)
  environ["XLA_FLAGS"] = " ".join(flags)


_add_cpu_xla_flags()
