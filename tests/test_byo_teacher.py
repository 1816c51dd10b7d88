"""The echo team's route: a torchvision teacher file is the frozen teacher as
is. Its test accuracy in the run table equals the accuracy of the same
weights run by torch on the same images; a file that does not fit the
teacher is one line naming the tensor."""
import os

import numpy as np
import pytest
import torch  # the 'interop' extra, which the README's test command installs
import torchvision
from safetensors.torch import save_file

from tests import helpers

CLASSES = ("A2C", "A4C", "PLAX")
SIZE = 32
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _folder(root):
  """RGB PNGs at exactly SIZE px, so no resize differs between frameworks."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("val", 4), ("test", 10)):
    for ci, cls in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(n):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        img[..., ci] //= 2
        Image.fromarray(img).save(os.path.join(root, split, cls, f"{i}.png"))
  return root


def _torch_accuracy(model, root):
  from PIL import Image
  correct = total = 0
  for ci, cls in enumerate(CLASSES):
    d = os.path.join(root, "test", cls)
    for f in sorted(os.listdir(d)):
      x = (np.asarray(Image.open(os.path.join(d, f)), np.float32) / 255 - MEAN) / STD
      with torch.no_grad():
        logits = model(torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32))
      correct += int(logits.argmax(-1).item() == ci)
      total += 1
  return correct / total


def _teacher_file(tmp_path, num_classes):
  torch.manual_seed(0)
  model = torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()
  for m in model.modules():  # running statistics that matter
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.2, 0.2)
      m.running_var.uniform_(0.5, 1.5)
  path = str(tmp_path / "teacher.safetensors")
  save_file(model.state_dict(), path)
  return model, path


def _run(tmp_path, spec, *extra):
  root = str(tmp_path / "echo")
  if not os.path.exists(root):
    _folder(root)
  return helpers.run_cli(
      "--config=configs/vanilla_kd_mobilenet_v3_small.py:runlocal",
      "--config.student.name=tiny_cnn", "--config.teacher.name=resnet18",
      f"--config.teacher.checkpoint={spec}", "--config.dataset.name=folder",
      f"--config.dataset.data_dir={root}", f"--config.dataset.image_size={SIZE}",
      "--config.dataset.eval_limit=0", *extra,
      f"--workdir={tmp_path / 'run'}"), root


def test_torchvision_file_is_the_frozen_teacher(tmp_path):
  model, path = _teacher_file(tmp_path, len(CLASSES))
  r, root = _run(tmp_path, f"torchvision:{path}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[teacher] resnet18 imported from torchvision weights" in r.stdout
  summary = helpers.read_json(str(tmp_path / "run" / "results.json"))
  assert summary["config"]["dataset"]["normalization"] == "imagenet"
  teacher_row = summary["rows"][0]
  assert teacher_row["stage"] == "teacher" and teacher_row["model"] == "resnet18"
  assert teacher_row["test_accuracy"] == pytest.approx(
      _torch_accuracy(model, root), abs=1e-9)
  assert not os.path.exists(tmp_path / "run" / "teacher")  # nothing trained


def test_a_file_that_does_not_fit_is_one_line(tmp_path):
  _, path = _teacher_file(tmp_path, len(CLASSES))
  r, _ = _run(tmp_path, f"torchvision:{path}", "--config.teacher.name=resnet50")
  line = helpers.one_error_line(r, "does not fit")
  assert "(64, 64, 3, 3)" in line
  assert not os.path.exists(tmp_path / "run")
