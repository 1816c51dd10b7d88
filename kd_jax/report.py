"""`python -m kd_jax.report`: the study report (tables, figures, deployment check).

The command sets up the process (native log lines, XLA:CPU) before
kd_jax.study.report imports TensorFlow or JAX; the code lives there.
"""
import sys

from kd_jax import console, cpu_runtime

if __name__ == "__main__":
  console.quiet_native_logs()

from kd_jax.study.report import main, make_report  # noqa: E402,F401  (notebooks)

if __name__ == "__main__":
  cpu_runtime.configure()  # before JAX starts a backend
  sys.exit(main())
