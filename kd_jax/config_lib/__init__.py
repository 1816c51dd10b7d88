"""What a kd_jax config is, in five modules:

  defaults    every field at its default (`base_config`), allowed values
  args        cell arg strings (``schedule=linear,seed=1,runlocal``) and
              config paths, tiny mode, config files loaded by path
  derived     values resolved from several fields (normalisation, class
              weights, epochs, hint links, feature layer pairs)
  validation  `validate`: one-line errors; returns what it resolved and
              leaves the config as it is
  specs       the validated config read once into frozen specs (data,
              optimizer, KD, run, teacher, loss) for the stages, the loop,
              batching, evaluation, the teacher cache and the optimizer

Every file in `configs/` is an ml_collections `get_config(arg=None)` that
starts from `base_config()` and applies `apply_arg(config, arg)`; the arg
string names one ablation cell. Keys are config paths (``kd.temperature=4``)
or the short aliases in `ALIASES`; a bare word is a flag
(``runlocal``/``tiny``: the tiny mode used by tests and Colab). This package
re-exports the four modules' names, `kd_jax.config_lib.base_config` among
them (public API).

May import: kd_jax.distill (the method registry), kd_jax.models (model and
feature names), kd_jax.weight_spec and kd_jax.errors.
"""
from kd_jax.config_lib.defaults import (  # noqa: F401
    CLASS_WEIGHTS, COMPUTE_DTYPES, CORRUPT_IMAGES, DATASETS,
    DEFAULT_TEMPERATURE, LR_SCHEDULES, NAN_POLICIES, NORMALIZATIONS,
    OPTIMIZERS, SELECT_METRICS, WEIGHT_SOURCES, base_config)
from kd_jax.config_lib.args import (  # noqa: F401
    ALIASES, FLAGS_IN_ARG, TINY_HINT_TEACHERS, TINY_TEACHERS, apply_arg,
    command_line_config, flatten, get_path, load_config_module, make_tiny,
    model_list, parse_arg, set_path, sibling_config, tiny_changes)
from kd_jax.config_lib.derived import (  # noqa: F401
    as_json, auto_normalization, class_weights_setting, feature_layer_pairs,
    hint_epochs, hint_links, hint_shapes, hints_enabled, int_list,
    normalization, peers, stage_maps, subclasses, teacher_bf16,
    teacher_epochs, teacher_lr, weight_fields)
from kd_jax.config_lib.validation import (  # noqa: F401
    validate)
from kd_jax.config_lib.specs import (  # noqa: F401
    DataSpec, LossSpec, OptimizerSpec, RunSpec, Specs, TeacherSpec,
    data_seed, data_spec, loss_spec, optimizer_and_kd, optimizer_spec,
    read_specs, run_spec, teacher_spec)
from kd_jax.errors import UserError  # noqa: F401  (users catch it here)
