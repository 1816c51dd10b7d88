"""How kd_jax runs on JAX's CPU backend: XLA:CPU flags and host-memory reuse.

`configure()` runs once on `import kd_jax`, before JAX starts its CPU
backend. Each part leaves alone whatever the user set themselves.

1. XLA:CPU flags, added to XLA_FLAGS (a flag already named there is kept as
   the user set it):
     --xla_cpu_experimental_ynn_fusion_type= : no YNNPACK fusions. With them
       on (this jaxlib's default) the KD steps of
       benchmarks/kd_step_vs_torch.py ran 10-30% slower on the project's CPU
       (VGG16 forward at 112 px, batch 64: 2.2-2.4 s with, 1.8 s without;
       simple_cnn's update 107 vs 92 ms; see benchmarks/RESULTS.md).

2. Host-memory reuse (Linux with glibc). XLA:CPU allocates each execution's
   temporary buffer -- every intermediate activation of a train step, 103 MB
   for the CIFAR KD step at batch 64, 447 MB for the echo one -- with malloc
   and frees it when the step ends. glibc serves blocks that large with a
   fresh mmap, and a worker thread's arena can serve nothing over 64 MB any
   other way, so every step page-faults its whole temporary buffer in again
   (25,480 faults per CIFAR step, ~2.7 us each on the project's VM). kd_jax
   therefore
     (a) runs single-device CPU computations on the calling thread
         (`jax_cpu_enable_async_dispatch=False`), so the buffer comes from
         glibc's main arena, and
     (b) has the main arena serve large blocks from its heap and keep freed
         memory for the next step: mallopt(M_MMAP_MAX, 0) and
         mallopt(M_TRIM_THRESHOLD, -1).
   Once the heap holds a step's buffers (the first few steps: the previous
   step's buffer may be freed just after its result is ready) a train step
   faults in almost no pages (CIFAR step: 40-150 instead of 25,480) and the
   CIFAR KD step runs 10-17% faster on that VM. The price: the process keeps
   its peak heap until it exits (as jemalloc/tcmalloc would). Forcing every
   thread onto the main arena (M_ARENA_MAX=1) was tried and rejected:
   Eigen's convolution kernels then spent 17% of the echo step in malloc.
   Skipped when KD_JAX_CPU_MEMORY=system, when the user set glibc malloc
   options themselves (MALLOC_* variables, glibc.malloc tunables) or
   JAX_CPU_ENABLE_ASYNC_DISPATCH, and on other C libraries. Multi-device CPU
   computations keep JAX's asynchronous dispatch (the option only concerns
   single-device ones) and so do not gain; they lose nothing either.
"""
import ctypes
import os
import sys

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)

# glibc's mallopt parameter numbers (malloc.h) and the values kd_jax sets.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MALLOC_OPTIONS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))

OPT_OUT = "KD_JAX_CPU_MEMORY"  # "reuse" (the default) or "system"


def add_cpu_xla_flags(environ=os.environ):
  flags = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=", 1)[0] for f in flags}
  for flag in CPU_XLA_FLAGS:
    if flag.split("=", 1)[0] not in names:
      flags.append(flag)
  environ["XLA_FLAGS"] = " ".join(flags)


def memory_reuse_blocked(environ=os.environ, platform=sys.platform):
  """Why kd_jax leaves host memory as it is (a sentence), or None."""
  choice = environ.get(OPT_OUT, "reuse")
  if choice not in ("reuse", "system"):
    raise ValueError(f"{OPT_OUT}={choice!r} is not allowed; allowed: "
                     "'reuse' (the default) or 'system'")
  if choice == "system":
    return f"{OPT_OUT}=system"
  if not platform.startswith("linux"):
    return f"not Linux ({platform})"
  users = sorted(k for k in environ if k.startswith("MALLOC_"))
  if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
    users.append("GLIBC_TUNABLES")
  if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in environ:
    users.append("JAX_CPU_ENABLE_ASYNC_DISPATCH")
  if users:
    return "set by the user: " + ", ".join(users)
  return None


def reuse_host_memory(environ=os.environ, platform=sys.platform):
  """Applies part 2 of the module docstring; returns whether it did."""
  if memory_reuse_blocked(environ, platform):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only (AttributeError elsewhere)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  if not all(mallopt(param, value) == 1 for param, value in MALLOC_OPTIONS):
    return False
  import jax  # importing does not start a backend
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


def configure():
  add_cpu_xla_flags()
  try:
    return reuse_host_memory()
  except ValueError as e:  # a bad KD_JAX_CPU_MEMORY: say so, change nothing
    print(f"kd_jax: {e}; host memory left to the system", file=sys.stderr)
    return False
