"""The Fashion-MNIST method comparison (configs/repro/fashion_methods.py)
again with a stronger teacher: the same student (`mlp`, 128 hidden units),
epochs, optimizer, batch, T = 4 and alpha = 0.9, but the teacher is the
`cnn_mnist` CNN (10 epochs) instead of the 2x1200 MLP, which is only 0.7
points above the scratch student. It tests whether the methods' losses
against scratch there come from the teacher-student gap or from the methods.

Cells: the teacher-based settings of fashion_methods.py (DML has no teacher
and is left out); FitNets guides the student's hidden layer with the
teacher's 128-unit dense layer. Seeds 0..4 (`--arg=seeds=N`).

  python -m kd_jax.study run configs/repro/fashion_methods_cnn_teacher.py --study_dir=studies/fashion_cnn_teacher --in_process --vmap
  python -m kd_jax.report studies/fashion_cnn_teacher --no_timing
"""

from kd_jax import config_lib
from kd_jax.study import runner as study

SETTINGS = (
    "method=none", "method=vanilla", "method=conditional",
    "method=ctkd", "method=ctkd_instance", "method=dkd", "method=dist",
    "method=vanilla,ls=true",
    "method=fitnets,kd.hint_student_layer=hidden1,kd.hint_teacher_layer=pre_logits",
    "method=vanilla,assistants=mlp_800x2",
)


def _protocol():
  return config_lib.sibling_config(__file__, "fashion_methods.py")


def get_config(arg=None):
  """fashion_methods.py's protocol with the CNN teacher."""
  return _protocol().get_config(",".join(filter(None, ["teacher.name=cnn_mnist", arg])))


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=5)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
