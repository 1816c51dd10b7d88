"""`python -m kd_jax.study`: list, run or print the cells of a study."""
import sys

from kd_jax.study.runner import main

if __name__ == "__main__":
  sys.exit(main())
