"""Weights from other frameworks: torchvision / timm state dicts and Keras
files mapped onto the zoo's variables (`convert.import_weights`).

Sits above the zoo (it reads the zoo's variable shapes and layer order);
`kd_jax.models` re-exports `import_weights`. May import: kd_jax.models.zoo,
kd_jax.weight_spec, numpy, jax, flax; torch and h5py as optional imports.
"""
