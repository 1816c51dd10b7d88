"""configs/imagenet_resnet34_resnet18.py: mdistiller's ImageNet recipe per
cell, ImageNet's folder layout (train/ and val/, val/ reported as test), and
(slow) the whole study in tiny mode on a generated ImageNet-layout folder
with a torchvision ResNet34 weight file as the frozen teacher, whose test
accuracy equals torchvision's own evaluation (Resize 256, CenterCrop 224)."""
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

from kd_jax import config_lib
from kd_jax.data import datasets as data
from tests import helpers

CONFIG = os.path.join(helpers.REPO, "configs", "imagenet_resnet34_resnet18.py")
WNIDS = ("n01440764", "n01443537", "n01484850")


def _module():
  return config_lib.load_config_module(CONFIG)


def _cell_config(setting):
  (cell,) = [c for c in _module().cells() if c.startswith(setting + ",")]
  return _module().get_config(cell)


def test_each_cell_is_mdistillers_recipe():
  # configs/imagenet/r34_r18/{kd,dkd,at,crd,reviewkd}.yaml of mdistiller.
  base = _module().get_config()
  assert (base.optimizer, base.momentum, base.weight_decay) == ("sgd", 0.9, 1e-4)
  assert (base.num_epochs, base.lr_decay_epochs, base.lr_decay_factor) == (
      100, "30,60,90", 0.1)
  assert (base.teacher.name, base.student.name) == ("resnet34", "resnet18")
  d = base.dataset
  assert (d.image_size, d.train_transform, d.random_flip, d.eval_transform) == (
      224, "random_resized_crop", True, "resize_center_crop")
  kd = _cell_config("method=vanilla")
  assert (kd.batch_size, kd.learning_rate, kd.kd.temperature) == (512, 0.2, 1.0)
  assert (kd.kd.ce_weight, kd.kd.kd_weight) == (0.5, 0.5)
  dkd = _cell_config("method=dkd")
  assert (dkd.kd.temperature, dkd.kd.dkd_alpha, dkd.kd.dkd_beta,
          dkd.kd.dkd_warmup_epochs) == (1.0, 1.0, 0.5, 1)
  for setting in ("method=crd", "method=reviewkd"):
    c = _cell_config(setting)
    assert (c.batch_size, c.learning_rate) == (256, 0.1)
  assert _cell_config("method=reviewkd").kd.reviewkd_warmup_epochs == 1
  assert [c.split(",")[0] for c in _module().cells()] == [
      "method=none", "method=vanilla", "method=at", "method=dkd",
      "method=crd", "method=reviewkd"]


def _write_imagenet_folder(root, train=8, val=4, seed=0):
  """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of various sizes and
  aspect ratios, the class visible in the colour."""
  rng = np.random.default_rng(seed)
  for split, n in (("train", train), ("val", val)):
    for ci, wnid in enumerate(WNIDS):
      d = os.path.join(root, split, wnid)
      os.makedirs(d)
      for i in range(n):
        h, w = rng.integers(160, 320, 2)
        img = rng.normal(60, 40, (h, w, 3))
        img[..., ci] += 120
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(d, f"{wnid}_{i}.JPEG"), quality=95)
  return root


def test_imagenet_layout_reports_val_as_test(tmp_path):
  root = _write_imagenet_folder(str(tmp_path / "imagenet"))
  c = _module().get_config(
      f"dataset.name=folder,dataset.data_dir={root},dataset.val_fraction=0.25")
  ds = data.load(c)
  assert ds.class_names == WNIDS
  assert len(ds.test) == 3 * 4 and all("/val/" in p for p in ds.test.paths)
  assert len(ds.train) + len(ds.val) == 3 * 8
  assert sorted(np.bincount(ds.val.labels).tolist()) == [2, 2, 2]
  # The test split is torchvision's evaluation view of each val/ file.
  (batch,) = list(data.eval_batches(ds.test.take(np.arange(2)), global_batch=2,
                                    image_size=224))
  ref = T.Compose([T.Resize(256), T.CenterCrop(224)])
  for path, got in zip(ds.test.paths[:2], batch["image"]):
    with Image.open(path) as im:
      want = np.asarray(ref(im.convert("RGB")))
    np.testing.assert_array_equal(got, want)


def _torch_accuracy(model, root):
  tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                  T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
  ds = torchvision.datasets.ImageFolder(os.path.join(root, "val"), tf)
  x = torch.stack([ds[i][0] for i in range(len(ds))])
  y = torch.tensor([ds[i][1] for i in range(len(ds))])
  with torch.no_grad():
    return int((model.eval()(x).argmax(1) == y).sum()) / len(y)


@pytest.mark.slow
def test_the_study_in_tiny_mode_on_an_imagenet_folder(tmp_path):
  root = _write_imagenet_folder(str(tmp_path / "imagenet"), train=12, val=6)
  torch.manual_seed(0)
  teacher = torchvision.models.resnet34(num_classes=len(WNIDS))
  path = str(tmp_path / "resnet34.safetensors")
  save_file(teacher.state_dict(), path)
  arg = (f"runlocal,dataset.name=folder,dataset.data_dir={root},"
         f"teacher.checkpoint=torchvision:{path}")
  out = str(tmp_path / "study")
  r = helpers.run_cli_module("kd_jax.study", "run", CONFIG, f"--arg={arg}",
                             f"--study_dir={out}", "--in_process", timeout=1500)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "6 cells ran, 0 failed" in r.stdout
  results = [helpers.read_json(os.path.join(out, d, "results.json"))
             for d in sorted(os.listdir(out)) if d.startswith("method-")]
  assert len(results) == 6
  want = _torch_accuracy(teacher, root)
  for res in results:
    assert res["config"]["dataset"]["image_size"] == 224  # teacher's size
    assert res["rows"][-1]["model"] == "resnet18"
    if res["config"]["kd"]["method"] == "none":  # scratch: no teacher row
      assert len(res["rows"]) == 1
      continue
    teacher_row = res["rows"][0]
    assert teacher_row["model"] == "resnet34"
    assert teacher_row["test_accuracy"] == pytest.approx(want, abs=1e-9)
