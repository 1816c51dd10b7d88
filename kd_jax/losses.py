"""Public import path of the logit losses: `kd_jax.distill.losses`."""
from kd_jax.distill.losses import *  # noqa: F401,F403
