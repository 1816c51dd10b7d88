"""`python -m kd_jax.study`: list, run or print the cells of a study."""
import sys

from kd_jax import console

if __name__ == "__main__":
  console.quiet_native_logs()  # before anything imports TensorFlow

from kd_jax.study.runner import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
