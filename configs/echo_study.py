"""The echo-view ablation study (4 echocardiography views), with seeds.

4 students (MobileNetV3-small/large, ShuffleNetV2 1.0, GhostNet) x {scratch,
vanilla KD at T = 2, 4, 8, conditional KD at T = 4, CTKD with cosine and
linear lambda} (alpha = 0.5) x 3 seeds = 84 cells, one shared VGG16 teacher,
112 px, the echo-view recipe (batch 256, 20 epochs, early stopping). Point it
at the frames: --arg=dataset.name=folder,dataset.data_dir=/data/echo

  python -m kd_jax.study run configs/echo_study.py --arg=dataset.name=folder,dataset.data_dir=/data/echo
  sbatch launch/slurm_study.sh configs/echo_study.py studies/echo dataset.name=folder,dataset.data_dir=/data/echo
  python -m kd_jax.report studies/echo
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

STUDENTS = ("mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
            "ghostnet_100")
SETTINGS = ("method=none",
            "method=vanilla,T=2", "method=vanilla,T=4", "method=vanilla,T=8",
            "method=conditional,T=4",
            "method=ctkd,schedule=cosine", "method=ctkd,schedule=linear")


def get_config(arg=None):
  c = config_lib.base_config()  # the echo-view recipe (VGG16 teacher, 112 px)
  c.kd.alpha = 0.5
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=3)
  return [study.join(f"student={s},{setting},seed={seed}", common)
          for s in STUDENTS for setting in SETTINGS for seed in range(seeds)]
