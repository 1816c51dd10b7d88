"""Patient and consistent teachers (Beyer et al. 2022, "Knowledge
distillation: A good teacher is patient and consistent") in the quickstart's
setting: the quickstart's teacher (mlp_1200x2, 5 epochs on all 54,000
training images of the embedded Fashion-MNIST) and student (`mlp`) on the
1,000-image transfer set, every student trained patiently: 1,000 epochs
(big_vision's Pet 'fast' count; 7,000 steps, 33x the quickstart's 30
epochs) with the quickstart's Adam 2e-3, cosine decay, batch 128.

Cells (seeds 0..4 by default, `--arg=seeds=N`):
  scratch             method=none
  vanilla             the quickstart's KD: T = 2, alpha = 0.5, no augmentation
  consistent          KL alone at T = 1 (alpha = 1), random crop (4 px) +
                      flip that teacher and student see alike, no mixing
  function matching   the same + mixup as big_vision's distillation configs:
                      lam = max(u, 1 - u), u ~ Beta(1, 1), each image mixed
                      with its neighbour in the batch

  python -m kd_jax.study run configs/repro/function_matching_fashion.py --study_dir=studies/fm_fashion --in_process
  python -m kd_jax.report studies/fm_fashion --no_timing
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

CONSISTENT = "method=vanilla,T=1,alpha=1,dataset.random_crop=true,dataset.random_flip=true"
SETTINGS = (
    "method=none",
    "method=vanilla,T=2,alpha=0.5",
    CONSISTENT,
    CONSISTENT + ",mixup=1,dataset.mix_ratio=folded,dataset.mix_partner=roll",
)


def get_config(arg=None):
  """The quickstart's setting (configs/quickstart.py: teacher on every image,
  student on the 1,000-image transfer set), trained patiently."""
  c = config_lib.sibling_config(__file__, "../quickstart.py").get_config()
  c.num_epochs = 1000  # patient
  c.scratch_baseline = False  # scratch is a cell of its own
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=5)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
