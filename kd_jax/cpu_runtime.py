"""How kd_jax runs on JAX's CPU backend: XLA:CPU flags and host-memory reuse.

`configure()` applies both; kd_jax's commands call it before JAX starts a
backend (importing kd_jax changes nothing), and so does a notebook or script
that trains with kd_jax. Each part leaves alone whatever the user set
themselves. Measurements: benchmarks/RESULTS.md (the KD-step section).

1. XLA:CPU flags, added to XLA_FLAGS (a flag already named there is kept as
   the user set it):
     --xla_cpu_experimental_ynn_fusion_type= : no YNNPACK fusions. With them
       on (this jaxlib's default) kd_jax's train and eval steps run slower on
       the CPU.

2. Host-memory reuse (Linux with glibc). XLA:CPU allocates each execution's
   temporary buffer (every intermediate activation of a train step, often
   hundreds of MB) with malloc and frees it when the step ends. glibc serves
   blocks that large with a fresh mmap, and a worker thread's arena can
   serve nothing over 64 MB any other way, so without this every step
   page-faults its whole temporary buffer in again. `configure()` therefore
     (a) runs single-device CPU computations on the calling thread
         (`jax_cpu_enable_async_dispatch=False`), so the buffer comes from
         glibc's main arena, and
     (b) has the main arena serve large blocks from its heap and keep freed
         memory for the next step: mallopt(M_MMAP_MAX, 0) and
         mallopt(M_TRIM_THRESHOLD, -1).
   Once the heap holds a step's buffers (the first few steps: the previous
   step's buffer may be freed just after its result is ready) a train step
   faults in almost no pages. The price: the process keeps its peak heap
   until it exits (as jemalloc/tcmalloc would). The other threads keep
   their own arenas: with every thread on the main arena (M_ARENA_MAX=1)
   Eigen's convolution kernels spend much of a step in malloc.
   Skipped when KD_JAX_CPU_MEMORY=system, when the user set glibc malloc
   options themselves (MALLOC_* variables, glibc.malloc tunables) or
   JAX_CPU_ENABLE_ASYNC_DISPATCH, and on other C libraries. Multi-device CPU
   computations keep JAX's asynchronous dispatch (the option only concerns
   single-device ones) and so do not gain; they lose nothing either.
"""

import ctypes
import os
import sys

import jax

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
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


_configured = []  # configure()'s result, once it has run


def configure():
  """Applies the module docstring's parts 1 and 2; returns whether host
  memory is reused. Call it before JAX starts a backend (its first
  computation or device query); a second call does nothing and returns the
  first call's result."""
  if not _configured:
    add_cpu_xla_flags()
    try:
      reuse = reuse_host_memory()
    except ValueError as e:  # a bad KD_JAX_CPU_MEMORY: say so, change nothing
      print(f"kd_jax: {e}; host memory left to the system", file=sys.stderr)
      reuse = False
    _configured.append(reuse)
  return _configured[0]
