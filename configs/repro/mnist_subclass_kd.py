"""Shi & Chen's KD report (ECE1512 project A), Table 2 on MNIST: teacher,
student from scratch, student with vanilla KD and student with subclass KD
(Mueller, Kornblith & Hinton 2020), T = 4 and alpha = 0.5 as the table states
(its reported test accuracies: teacher 99.29 / with subclasses 99.31,
scratch 98.11, KD 98.85, subclass KD 98.93).

Models as the report's Table 3 counts them: teacher `cnn_mnist` (two valid
3x3 convs of 32 and 64 filters, max-pools 2x2/1 and 2x2/2, Dense(128):
1,011,466 parameters at one input channel), student `mlp_784x2` (784-784-784-10:
1,238,730). kd_jax feeds greyscale as 3 repeated channels, so each first
layer holds 3x the report's input weights (the same function class).

A study: 3 settings x seeds (default 3). The plain cells distil from one
teacher the study trains; each subclass cell trains its own teacher with
2 subclasses per class (20 logits; cross-entropy on the grouped logits plus
the auxiliary subclass loss), as a subclass teacher cannot be the plain one.

  python -m kd_jax.study run configs/repro/mnist_subclass_kd.py --arg=dataset.data_dir=/data/mnist --study_dir=studies/mnist_subclass_kd --in_process --vmap
  python -m kd_jax.report studies/mnist_subclass_kd --no_timing

Choices the report leaves open, stated: Adam 1e-3 with cosine decay, batch
128, 5 teacher epochs and 10 student epochs, no augmentation (so the
teacher's logits are cached), the best validation epoch kept.
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

SETTINGS = ("method=none", "method=vanilla", "method=subclass")


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "mnist_local"
  c.dataset.image_size = 28
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.learning_rate = 1e-3
  c.early_stopping_patience = 0
  c.teacher.name = "cnn_mnist"
  c.teacher.num_epochs = 5
  c.student.name = "mlp_784x2"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  c.kd.subclasses = 2
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=3)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
