"""Fashion-MNIST, the CNN teacher of fashion_methods_cnn_teacher.py distilled
into a student wide enough to follow it: `mlp_784x2` (784-784-784; 9x fewer
FLOPs than `cnn_mnist`), scratch vs vanilla KD at T = 4 / alpha = 0.9 and
T = 2 / alpha = 0.5; 5 epochs of Adam 2e-3 (cosine), batch 128, no
augmentation, seeds 0..2 (`--arg=seeds=N`). The teacher is a trained run
given in the arg (e.g. that study's):

  python -m kd_jax.study run configs/repro/fashion_wide_student.py --arg=teacher.checkpoint=/tmp/exp/fashion_cnn/teacher --study_dir=/tmp/exp/s784 --in_process --vmap
  python -m kd_jax.report /tmp/exp/s784 --no_timing
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

SETTINGS = ("method=none", "method=vanilla", "method=vanilla,T=2,alpha=0.5")


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "fashion_mnist_local"
  c.dataset.image_size = 28
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 5
  c.learning_rate = 2e-3
  c.early_stopping_patience = 0
  c.teacher.name = "cnn_mnist"
  c.student.name = "mlp_784x2"
  c.kd.method = "vanilla"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.9
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=3)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
