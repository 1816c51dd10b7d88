"""`python -m kd_jax.predict`: classify images and videos with an exported
student.

The command sets up the process (native log lines, XLA:CPU) before
kd_jax.deploy.predict imports TensorFlow or JAX; the code lives there.
"""
import sys

from kd_jax import console, cpu_runtime

if __name__ == "__main__":
  console.quiet_native_logs()

from kd_jax.deploy.predict import main  # noqa: E402

if __name__ == "__main__":
  cpu_runtime.configure()  # before JAX starts a backend
  sys.exit(main())
