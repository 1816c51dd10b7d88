"""Public import path of the feature and relation losses:
`kd_jax.distill.feature_losses`."""
from kd_jax.distill.feature_losses import *  # noqa: F401,F403
