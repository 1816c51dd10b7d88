"""What distillation is: the method registry and its losses.

Owns: `methods` (the registry: every method's name and everything other
modules need to know about it), `losses` (logit losses), `feature_losses`
(feature and relation losses), `boundary_losses` (AB and OFD, on pre-ReLU
maps), `factor_losses` (FT and KDSVD) and `kd_modules` (the trainable parts
some methods add: adapters, CTKD's temperature MLP, VID regressors, CRD
heads, ReviewKD's fusion, AB's and OFD's connectors, FT's translator).
Pure functions of arrays and Flax modules.

May import: jax, flax, optax, numpy and kd_jax.errors. Nothing else of
kd_jax: every other layer reads this one.
"""
