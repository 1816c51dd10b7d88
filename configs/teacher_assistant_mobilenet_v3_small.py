"""Teacher-assistant chain (Mirzadeh et al. 2020):
VGG16 -> ResNet18 (assistant) -> mobilenet_v3_small, each link vanilla KD.

Each link is a full distillation run in `<workdir>/assistant1_resnet18/`
whose best checkpoint is the next link's teacher; the chain resumes link by
link. Longer chains: `:assistants=resnet50+resnet18` is not valid arg syntax
(commas separate cells) -- use --config.kd.assistants=resnet50,resnet18.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "vanilla"
  c.kd.assistants = "resnet18"
  return config_lib.apply_arg(c, arg)
