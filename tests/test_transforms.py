"""The field's transforms against torchvision: the random-resized crop's box
distribution (`RandomResizedCrop.get_params`) and its resize
(`F.resized_crop`), the evaluation crop (`Resize` + `CenterCrop` on PIL
images); on the device inside the step, a function of (data seed, step),
the teacher seeing the student's view, cached views equal to the live
teacher; bad settings refused in one line."""
import dataclasses
import glob
import math
import os

# torch before JAX runs anything in this process: after a JAX run torch's
# triton probe can crash it.
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import augment
from kd_jax.data import datasets as data
from kd_jax.data import transforms
from kd_jax.study import report
from kd_jax.train import pipeline as train
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import teacher_cache
from tests import helpers

RRC = {"dataset.train_transform": "random_resized_crop",
       "dataset.random_flip": True}
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
N_BOXES = 20000


# ------------------------------------------------------ the crop box rule


def _torch_boxes(height, width, n, scale=SCALE, ratio=RATIO):
  torch.manual_seed(0)
  img = torch.zeros(1, height, width)
  return np.asarray([T.RandomResizedCrop.get_params(img, list(scale),
                                                    list(ratio))
                     for _ in range(n)])


def _jax_boxes(height, width, n, scale=SCALE, ratio=RATIO):
  boxes = augment.sample_boxes(jax.random.PRNGKey(0), n, height, width,
                               scale, ratio)
  return np.asarray(boxes)  # (top, left, h, w), as torchvision's (i, j, h, w)


def _ks(a, b):
  """The two-sample Kolmogorov-Smirnov distance of two samples."""
  grid = np.union1d(a, b)
  cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)
  return np.max(np.abs(cdf(a) - cdf(b)))


def _box_statistics(boxes, height, width):
  top, left, h, w = boxes.T.astype(np.float64)
  return {"top": top, "left": left, "h": h, "w": w,
          "area_fraction": h * w / (height * width),
          "log_aspect": np.log(w / h)}


@pytest.mark.parametrize("height,width", [(64, 64), (96, 128), (20, 120)],
                         ids=["square", "4:3", "elongated"])
def test_crop_boxes_follow_torchvisions_distribution(height, width):
  """20,000 boxes each: every statistic's distributions agree within the
  two-sample KS critical value at 0.1 % (1.95 sqrt(2 / n) = 0.0195), its
  quantiles within it, its mean within four standard errors, and the
  fallback (the central crop after ten misses; 31 % of the elongated
  image's draws) as often as torchvision's."""
  ours, theirs = (_jax_boxes(height, width, N_BOXES),
                  _torch_boxes(height, width, N_BOXES))
  assert ((ours[:, 2] > 0) & (ours[:, 0] + ours[:, 2] <= height)).all()
  assert ((ours[:, 3] > 0) & (ours[:, 1] + ours[:, 3] <= width)).all()
  a, b = (_box_statistics(ours, height, width),
          _box_statistics(theirs, height, width))
  critical = 1.95 * math.sqrt(2 / N_BOXES)
  for name in a:
    assert _ks(a[name], b[name]) < critical, name
    # Each quantile of ours lies between theirs at p -/+ the KS band.
    q = np.asarray([0.05, 0.25, 0.5, 0.75, 0.95])
    ours_q = np.quantile(a[name], q)
    assert (np.quantile(b[name], q - critical) <= ours_q).all(), name
    assert (ours_q <= np.quantile(b[name], q + critical)).all(), name
    se = math.sqrt((a[name].var() + b[name].var()) / N_BOXES)
    assert abs(a[name].mean() - b[name].mean()) < 4 * se + 1e-12, name
  fallback = augment.fallback_box(height, width, RATIO)
  f_ours = np.mean(np.all(ours == fallback, axis=1))
  f_theirs = np.mean(np.all(theirs == fallback, axis=1))
  p = (f_ours + f_theirs) / 2
  assert abs(f_ours - f_theirs) <= 4 * math.sqrt(2 * p * (1 - p) / N_BOXES)
  if (height, width) == (20, 120):
    assert 0.25 < f_theirs < 0.4


@pytest.mark.parametrize("height,width", [(1, 100), (100, 1), (5, 5)])
def test_fallback_is_torchvisions_central_crop(height, width):
  """Images no candidate fits (1 x 100, 100 x 1) or, with scale = ratio =
  (2, 2) impossible, a square: always torchvision's fallback box."""
  kw = {} if height != width else {"scale": (2.0, 2.0), "ratio": (2.0, 2.0)}
  theirs = _torch_boxes(height, width, 5, **kw)
  ours = _jax_boxes(height, width, 5, **kw)
  assert (theirs == theirs[0]).all()
  np.testing.assert_array_equal(ours, theirs)
  assert tuple(theirs[0]) == augment.fallback_box(
      height, width, kw.get("ratio", RATIO))


# ------------------------------------------------------ the crop's resize


# float32 pixels in [0, 1]; the products run at HIGHEST precision, so the
# only difference to torch is float32 rounding (about 1e-7 measured on CPU).
RESIZE_ATOL = 1e-5


@pytest.mark.parametrize("size", [24, 56])
def test_crop_and_resize_equals_torchvisions_resized_crop(size):
  """Boxes of every kind (down- and upscaled, at the edges, the whole
  image) against `F.resized_crop(tensor, bilinear, antialias=True)`."""
  rng = np.random.default_rng(0)
  images = rng.random((5, 37, 53, 3)).astype(np.float32)
  boxes = np.asarray([[3, 5, 20, 30], [0, 0, 37, 53], [30, 40, 7, 13],
                      [0, 20, 37, 10], [11, 0, 5, 53]], np.int32)
  ours = np.asarray(augment.crop_and_resize(jnp.asarray(images),
                                            jnp.asarray(boxes), size))
  for image, box, got in zip(images, boxes, ours):
    want = TF.resized_crop(torch.from_numpy(image).permute(2, 0, 1),
                           *map(int, box), [size, size],
                           interpolation=T.InterpolationMode.BILINEAR,
                           antialias=True).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=RESIZE_ATOL, rtol=0)


# ------------------------------------------------------ the evaluation crop


@pytest.mark.parametrize("shape", [(300, 400, 3), (400, 300, 3), (256, 256, 3),
                                   (500, 333, 1), (224, 1000, 3)])
def test_fit_is_torchvisions_resize_center_crop(shape):
  rng = np.random.default_rng(sum(shape))
  image = rng.integers(0, 256, shape, dtype=np.uint8)
  pil = Image.fromarray(image[..., 0] if shape[-1] == 1 else image)
  want = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(pil))
  got = transforms.fit(image, 224, "resize_center_crop")
  np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_eval_transform_crops_in_memory_eval_splits_once():
  plain = data.load(helpers.tiny_config("dataset=digits"))
  c = helpers.tiny_config("dataset=digits", **{
      "dataset.eval_transform": "resize_center_crop"})
  ds = data.load(c)
  np.testing.assert_array_equal(ds.train.images, plain.train.images)
  for name in ("val", "test"):
    images = getattr(ds, name).images
    assert images.shape[1:] == (28, 28, 1)
    want = [transforms.fit(x, 28, "resize_center_crop")
            for x in getattr(plain, name).images[:20]]
    np.testing.assert_array_equal(images[:20], want)


# ------------------------------------------------------ inside the step


def _setup(**overrides):
  c = helpers.tiny_config("dataset=digits,method=vanilla,T=1,alpha=1",
                          scratch_baseline=False, **{**RRC, **overrides})
  ds = data.load(c)
  teacher = models.get_model("mlp_small", num_classes=ds.num_classes)
  t_vars = models.init(teacher, jax.random.PRNGKey(9), c.dataset.image_size)
  run = stage.Stage(config_lib.read_specs(c), role="student",
                    model_name=c.student.name, method="vanilla",
                    stage_dir="/nonexistent", num_epochs=2,
                    learning_rate=c.learning_rate, ds=ds,
                    mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]),
                                           ("data",)),
                    teacher=step.Frozen(teacher, t_vars))
  batch = next(data.train_batches(ds.train, global_batch=c.batch_size, seed=0,
                                  epoch=0, num_steps=1, image_size=28))
  return c, run, batch, (teacher, t_vars)


def test_step_view_is_torchvisions_crop_of_the_keys_boxes():
  """The step's input: each image's box drawn from (data seed, step)'s
  crop key, resized as torchvision does, flipped by the flip key."""
  _, run, batch, _ = _setup()
  spec = run.spec()
  images = jnp.asarray(batch["image"])
  global_step = 13
  x = np.asarray(step.augmented(spec, images, global_step))
  crop_rng, flip_rng = jax.random.split(
      step.step_rngs(spec.data_seed, global_step)[0])
  boxes = np.asarray(augment.sample_boxes(crop_rng, len(images), 8, 8))
  flips = np.asarray(jax.random.bernoulli(
      flip_rng, 0.5, (len(images), 1, 1, 1))).ravel()
  grey = torch.from_numpy(np.asarray(batch["image"], np.float32) / 255.0)
  for i in range(len(images)):
    want = TF.resized_crop(grey[i].permute(2, 0, 1), *map(int, boxes[i]),
                           [28, 28], antialias=True)[0].numpy()
    want = want[:, ::-1] if flips[i] else want
    for channel in range(3):  # greyscale repeated to RGB
      np.testing.assert_allclose(x[i, ..., channel], (want - 0.5) / 0.5,
                                 atol=2 * RESIZE_ATOL, rtol=0)


def test_views_are_a_function_of_data_seed_and_step():
  _, run, batch, _ = _setup()
  spec = run.spec()
  images = jnp.asarray(batch["image"])
  view = lambda sp, s: np.asarray(step.augmented(sp, images, s))
  np.testing.assert_array_equal(view(spec, 3), view(spec, 3))
  assert not np.allclose(view(spec, 3), view(spec, 4))
  assert not np.allclose(view(spec, 3),
                         view(dataclasses.replace(spec, data_seed=1), 3))
  # Epoch e's batch s is step e * steps_per_epoch + s: a resumed run's
  # batch 2 of epoch 1 is the uninterrupted run's.
  spe = spec.steps_per_epoch
  np.testing.assert_array_equal(view(spec, 1 * spe + 2), view(spec, spe + 2))


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_sees_the_students_view():
  """alpha = 1, T = 1: the step's loss is KL(teacher || student) on one
  input; it equals the KL with both models on the step's cropped view, and
  the live teacher function (the cache's, the sweeps') sees that view."""
  c, run, batch, (teacher, t_vars) = _setup()
  spec = run.spec()
  tx, state = run.init_state()
  x = step.augmented(spec, jnp.asarray(batch["image"]), 0)
  _, m = jax.jit(step.make_train_step(spec, tx))(
      state, batch, step.hyperparams(config_lib.read_specs(c)), t_vars)
  lt = _log_softmax(teacher.apply(t_vars, x))
  ls = _log_softmax(spec.student.apply({"params": state.params["student"]},
                                       x, train=True))
  assert float(m["loss"]) == pytest.approx(
      np.mean(np.sum(np.exp(lt) * (lt - ls), -1)), rel=1e-5)
  live = step.live_teacher_logits(spec, t_vars, jnp.asarray(batch["image"]), 0)
  np.testing.assert_allclose(live, teacher.apply(t_vars, x), rtol=1e-5,
                             atol=1e-5)


def test_pad_crop_is_random_crop_bit_for_bit():
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (16, 28, 28, 1), dtype=np.uint8))
  rng = jax.random.PRNGKey(3)
  old = helpers.tiny_config("dataset=digits", **{"dataset.random_crop": True,
                                                  "dataset.random_flip": True})
  new = helpers.tiny_config("dataset=digits", **{
      "dataset.train_transform": "pad_crop", "dataset.random_flip": True})
  pre = [step.Preprocess.from_spec(config_lib.data_spec(k)) for k in (old, new)]
  assert pre[0] == pre[1]
  np.testing.assert_array_equal(pre[0](images, rng), pre[1](images, rng))
  assert not np.allclose(pre[0](images, rng), pre[0](images))
  # The pad crop itself: reflect-pad 4, a window at the key's offsets.
  crop_rng, flip_rng = jax.random.split(rng)
  x = np.repeat(np.asarray(images, np.float32) / 255.0, 3, axis=-1)
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  offsets = np.asarray(jax.random.randint(crop_rng, (16, 2), 0, 9))
  flips = np.asarray(jax.random.bernoulli(flip_rng, 0.5, (16, 1, 1, 1)))
  want = np.stack([p[o[0]:o[0] + 28, o[1]:o[1] + 28]
                   for p, o in zip(padded, offsets)])
  want = np.where(flips, want[:, :, ::-1], want)
  np.testing.assert_allclose(pre[1](images, rng), (want - 0.5) / 0.5,
                             atol=1e-6, rtol=0)


def test_evaluation_never_crops():
  _, run, batch, _ = _setup()
  pre = run.spec().preprocess
  images = jnp.asarray(batch["image"])
  np.testing.assert_array_equal(
      pre(images), data.preprocess(images, image_size=28,
                                   normalization=pre.normalization))


# ------------------------------------------------------ settings and labels


@pytest.mark.parametrize("args,message", [
    (["--config.dataset.train_transform=bogus"],
     "unknown config.dataset.train_transform 'bogus'; allowed:"),
    (["--config.dataset.random_crop=True",
      "--config.dataset.train_transform=random_resized_crop"],
     "config.dataset.random_crop=True asks for the pad crop but "
     "train_transform='random_resized_crop'; set one of the two"),
    (["--config.dataset.rrc_min_scale=0"],
     "config.dataset.rrc_min_scale=0, rrc_max_scale=1 must satisfy "
     "0 < min <= max <= 1"),
    (["--config.dataset.eval_resize_size=20"],
     "config.dataset.eval_resize_size=20 must be 0 (automatic) or >= "
     "image_size (28)"),
    (["--config.dataset.eval_transform=center"],
     "unknown config.dataset.eval_transform 'center'"),
], ids=["bogus", "random_crop+rrc", "min_scale_0", "eval_resize_small",
        "eval_bogus"])
def test_bad_transform_settings_are_one_line(args, message, tmp_path):
  workdir = tmp_path / "wd"
  r = helpers.run_cli("--config=configs/quickstart.py", *args,
                      f"--workdir={workdir}", timeout=300)
  helpers.one_error_line(r, message)
  assert not workdir.exists()


def test_report_names_the_crop():
  label = report.augmentation_label
  assert label({"train_transform": "random_resized_crop",
                "random_flip": True}) == "rrc+flip"
  assert label({"random_crop": True}) == "crop"
  assert label({"train_transform": "pad_crop", "random_crop": False}) == "crop"
  assert label({"train_transform": "none", "random_flip": True}) == "flip"
  assert label({}) == "none"


# ------------------------------------------------ the teacher's cached views


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return helpers.train_digits_teacher(tmp_path_factory.mktemp("rrc_teacher"))


def _config(teacher_dir, cache_dir, **overrides):
  return helpers.tiny_config(
      "dataset=digits,method=vanilla", scratch_baseline=False,
      **{"teacher.checkpoint": teacher_dir, "teacher.name": "simple_cnn",
         "teacher.cache_dir": cache_dir, **RRC, **overrides})


def _views_root(c, teacher_dir):
  specs = config_lib.read_specs(c)
  ds = data.load(c)
  teacher = train.load_frozen(specs, ds, jax.sharding.Mesh(
      np.asarray(jax.devices()[:1]), ("data",)), teacher_dir)
  spec = step.make_spec(specs, models.get_model("mlp", num_classes=10),
                        "vanilla", steps_per_epoch=c.max_steps_per_epoch,
                        teacher=teacher.model)
  return teacher_cache.AugmentedViews(specs, ds, teacher, spec,
                                      c.max_steps_per_epoch, None).root


def test_views_key_names_the_transform(teacher_dir):
  root = lambda **o: _views_root(_config(teacher_dir, "/c", **o), teacher_dir)
  rrc = root()
  assert rrc != root(**{"dataset.rrc_min_scale": 0.2})
  assert rrc != root(**{"dataset.rrc_max_ratio": 2.0})
  pad = root(**{"dataset.train_transform": "pad_crop"})
  assert pad not in (rrc, root(**{"dataset.train_transform": "none"}))
  assert pad == root(**{"dataset.train_transform": "",
                        "dataset.random_crop": True})


def test_rrc_views_give_the_same_student_as_the_live_teacher(teacher_dir,
                                                             tmp_path):
  cache = str(tmp_path / "cache")
  out = {name: train.train_and_evaluate(_config(teacher_dir, c),
                                        str(tmp_path / name))
         for name, c in (("live", ""), ("views", cache))}
  assert glob.glob(os.path.join(cache, "views-*", "epoch-0.npy"))
  assert out["views"]["rows"] == out["live"]["rows"]
  params = lambda name: helpers.restore_raw(os.path.join(
      str(tmp_path / name), "student", "checkpoints", "best"), "model")[1]
  for x, y in zip(jax.tree.leaves(params("live")),
                  jax.tree.leaves(params("views"))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
