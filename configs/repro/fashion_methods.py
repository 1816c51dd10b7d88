"""Every method under one protocol on Fashion-MNIST, with seeds: one teacher
(mlp_1200x2, 10 epochs), one student (`mlp`: one hidden layer of 128 units),
the same 10 epochs, optimizer (Adam 1e-3, cosine), batch 128 and no
augmentation for every cell (so the teacher's logits are cached once), T = 4,
alpha = 0.9 where a method has them; the CTKD cells learn T.

Cells: scratch, vanilla, conditional, CTKD (global, cosine lambda), CTKD
instance-wise, DKD, DIST, vanilla + logit standardisation, DML (a peer of the
student's architecture), FitNets (single stage: KD + hint on the first hidden
layers) and a teacher-assistant chain (mlp_1200x2 -> mlp_800x2 -> student);
seeds 0..4 by default (`--arg=seeds=N`).

  python -m kd_jax.study run configs/repro/fashion_methods.py --study_dir=studies/fashion_methods --in_process --vmap
  python -m kd_jax.report studies/fashion_methods --no_timing
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

SETTINGS = (
    "method=none", "method=vanilla", "method=conditional",
    "method=ctkd", "method=ctkd_instance", "method=dkd", "method=dist",
    "method=vanilla,ls=true", "method=dml",
    "method=fitnets,kd.hint_student_layer=hidden1,kd.hint_teacher_layer=hidden1",
    "method=vanilla,assistants=mlp_800x2",
)


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "fashion_mnist_local"
  c.dataset.image_size = 28
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.learning_rate = 1e-3
  c.early_stopping_patience = 0
  c.teacher.name = "mlp_1200x2"
  c.student.name = "mlp"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.9
  c.kd.hint_weight = 1.0  # MSE on 128-d activations: comparable to the KD term
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=5)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
