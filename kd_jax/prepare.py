"""`python -m kd_jax.prepare`: videos or image folders -> patient-split
frame folders (the code lives in kd_jax.data.prepare)."""
import sys

from kd_jax.data.prepare import main

if __name__ == "__main__":
  sys.exit(main())
