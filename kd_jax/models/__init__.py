"""Model zoo: a plain-dict registry of Flax linen classifiers.

Conventions every model follows (so the trainer can treat them alike):
  * `module.apply(variables, x_BxHxWx3, train=bool)` returns `logits_BxC`.
    Input is float32 NHWC; greyscale data is repeated to 3 channels by the
    data pipeline, never by the model.
  * Intermediate feature maps are exposed by `self.sow('features', name, x)`
    inside the forward pass; `apply_with_features` collects them from the
    same forward pass (no second pass).
  * BatchNorm layers read `train` (batch statistics in training, running
    averages in eval) and keep running stats in the `batch_stats` collection.
    Under data parallelism the batch is one global array sharded over the
    ('data',) mesh, so `jnp.mean` over the batch axis inside BatchNorm is a
    mean over the *global* batch: statistics are global-batch, as if training
    on a single device (this is what makes 1 vs 8 devices agree).
"""
from kd_jax.models.zoo import (  # noqa: F401  (the public API)
    MODELS, VARIABLE_COLLECTIONS, UnknownModelError, apply_with_features,
    bn_before_relu, count_params, feature_shapes, flatten_sown, get_model, head_mask, init,
    init_shapes, module_feature_shapes)
from kd_jax.models.interop.convert import import_weights  # noqa: F401
