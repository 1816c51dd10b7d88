"""Function matching (Beyer et al. 2022, "Knowledge distillation: A good
teacher is patient and consistent", CVPR): the student matches the frozen
teacher's function with the KL alone (no label term) on aggressively mixed
views that the teacher sees exactly as the student does (consistent), for
very many epochs (patient).

A recipe on vanilla KD, not a method of its own: kd.method=vanilla with
alpha = 1 is T^2 KL(p_t || p_s) at temperature T, big_vision's
`distance='kl'` loss (big_vision/evaluators/proj/distill/distance.py
`dist`); the teacher runs on the step's own mixed batch (or its cached
logits of that batch: teacher_cache.AugmentedViews).

The numbers are big_vision's Flowers/Pet distillation config
(big_vision/configs/proj/distill/bigsweep_flowers_pet.py: the paper's
recommended settings of Fig. 3 / Table 4), chosen with `recipe=flowers|pet`
(default flowers) and `variant=fast|medium|long` (default medium, theirs):
  batch 512; crop + flip (big_vision: inception_crop(128) | flip_lr, i.e. a
  random-resized crop of 5-100 % of the area, big_vision/pp/ops_image.py;
  here train_transform=random_resized_crop with rrc_min_scale=0.05), then
  mixup with lam = max(u, 1 - u), u ~ Beta(1, 1), each image mixed with its
  neighbour in the batch (`config.mixup = dict(p=1.0)`, big_vision/utils.py
  `get_mixup`);
  Adam, gradients clipped to global norm 1, 1,500 warmup steps, cosine decay;
                     epochs    T    lr      wd (big_vision: decoupled, not x lr)
  flowers fast       10,000   10    3e-3    3e-4
  flowers medium    100,000    1    1e-3    1e-4
  flowers long    1,000,000    1    3e-4    1e-5
  pet fast            1,000    5    1e-2    1e-3
  pet medium          3,000   10    3e-3    3e-4
  pet long           30,000    2    3e-3    1e-5
big_vision adds wd * w to Adam's update before the schedule and not times
the learning rate; optax's adamw multiplies its weight_decay by the learning
rate, so weight_decay = wd / lr here (big_vision decays kernels only, kd_jax
every parameter). Their epochs are over Flowers102's 1,020 and Pet's 3,312
training images; here the student gets a transfer set of the default data
of about that size in whole batches (`dataset.transfer_limit` 1,024 and
3,072). Teacher and student are the per-method configs' VGG16 and
MobileNetV3-small at 128 px (big_vision: BiT-M R152x2 -> BiT R50x1).

The paper distils a trained teacher: give one with
--config.teacher.checkpoint=RUN (a `kd.method=none` run trains one). Without
it the run first trains VGG16 for `teacher.num_epochs` on all training
images with this same recipe (mixing included).

  python -m kd_jax.main --config=configs/function_matching.py:variant=fast --config.teacher.checkpoint=workdirs/vgg16_teacher
  python -m kd_jax.main --config=configs/function_matching.py:runlocal   # tiny mode
"""
from kd_jax import config_lib

# big_vision's bigsweep_flowers_pet.py: (epochs, T, lr, wd) per variant.
RECIPES = {
    "flowers": {"fast": (10_000, 10.0, 3e-3, 3e-4),
                "medium": (100_000, 1.0, 1e-3, 1e-4),
                "long": (1_000_000, 1.0, 3e-4, 1e-5)},
    "pet": {"fast": (1_000, 5.0, 1e-2, 1e-3),
            "medium": (3_000, 10.0, 3e-3, 3e-4),
            "long": (30_000, 2.0, 3e-3, 1e-5)},
}
# Their training-set sizes (1,020 and 3,312) in whole batches of 512.
TRANSFER = {"flowers": 1024, "pet": 3072}


def _own_items(arg):
  """(recipe, variant, the arg without those items)."""
  items = [a.strip() for a in (arg or "").split(",") if a.strip()]
  own = {"recipe": "flowers", "variant": "medium"}
  rest = []
  for item in items:
    key, _, value = item.partition("=")
    if key in own:
      own[key] = value
    else:
      rest.append(item)
  if own["recipe"] not in RECIPES or own["variant"] not in RECIPES["pet"]:
    raise config_lib.UserError(
        f"recipe={own['recipe']!r}, variant={own['variant']!r}: allowed "
        f"recipe={'|'.join(RECIPES)}, variant={'|'.join(RECIPES['pet'])}")
  return own["recipe"], own["variant"], ",".join(rest)


def get_config(arg=None):
  recipe, variant, rest = _own_items(arg)
  epochs, temperature, lr, wd = RECIPES[recipe][variant]
  c = config_lib.base_config()
  c.dataset.image_size = 128
  c.dataset.transfer_limit = TRANSFER[recipe]
  c.dataset.train_transform = "random_resized_crop"
  c.dataset.rrc_min_scale = 0.05  # big_vision's inception_crop area_min=5
  c.dataset.random_flip = True
  c.dataset.mixup_alpha = 1.0
  c.dataset.mix_ratio = "folded"
  c.dataset.mix_partner = "roll"
  c.batch_size = 512
  c.num_epochs = epochs
  c.early_stopping_patience = 0  # patient: the schedule runs to its end
  c.optimizer = "adam"
  c.learning_rate = lr
  c.weight_decay = wd / lr
  c.warmup_steps = 1500
  c.grad_clip_norm = 1.0
  c.teacher.name = "vgg16"
  c.teacher.num_epochs = 20  # only when no teacher.checkpoint is given
  c.teacher.learning_rate = 1e-3
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "vanilla"
  c.kd.alpha = 1.0  # the KL alone: no label term
  c.kd.temperature = temperature
  return config_lib.apply_arg(c, rest)
