"""configs/mhist_transfer.py end to end on a tiny 2-class image folder, from
Keras weight files written here the way keras.applications stores its
ImageNet downloads (weights-only HDF5, no top)."""
import json
import os

import h5py
import pytest

from kd_jax.train import checkpointing
from tests import helpers

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn.t accept a copy keyword")
CONFIG = "--config=configs/mhist_transfer.py"
KERAS_APPS = {"resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "ResNet50V2",
              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5":
                  "MobileNetV2"}


def _notop_weights(weights_dir, which):
  """Random-weight Keras applications files without the top."""
  import keras
  from keras.src.legacy.saving import legacy_h5_format
  for filename, app in KERAS_APPS.items():
    if app not in which:
      continue
    model = getattr(keras.applications, app)(
        weights=None, include_top=False, input_shape=(32, 32, 3))
    with h5py.File(os.path.join(weights_dir, filename), "w") as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _run(tmp_path, method, which):
  weights = tmp_path / "weights"
  weights.mkdir()
  _notop_weights(str(weights), which)
  folder = str(tmp_path / "mhist")
  helpers.write_image_folder(folder, classes=("HP", "SSA"))
  workdir = str(tmp_path / "run")
  r = helpers.run_cli(f"{CONFIG}:runlocal,method={method},weights_dir={weights}",
                      f"--config.dataset.data_dir={folder}",
                      f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, r.stdout


@pytest.mark.slow
def test_student_with_transfer_learning_without_kd(tmp_path):
  workdir, out = _run(tmp_path, "none", ("MobileNetV2",))
  assert ("[student] mobilenet_v2_keras starts from keras weights" in out
          and "its head is re-initialised for 2 outputs" in out), out[-2000:]
  assert "fine-tuning epoch 1/1: head only" in out
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["dataset"]["normalization"] == "half"  # Keras' [-1, 1]
  _, meta = checkpointing.read_model_meta(os.path.join(workdir, "student"))
  assert meta["normalization"] == "half" and meta["model"] == "mobilenet_v2_keras"
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert len(res["history"]) == 2
  assert res["init_from"] == "keras:" + str(
      tmp_path / "weights" / next(iter(KERAS_APPS.items()))[0]).replace(
          "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
          "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vanilla", "subclass"])
def test_teacher_and_student_from_keras_weights(tmp_path, method):
  workdir, out = _run(tmp_path, method, ("ResNet50V2", "MobileNetV2"))
  assert "[teacher] resnet50_v2 starts from keras weights" in out
  outputs = 4 if method == "subclass" else 2
  assert f"re-initialised for {outputs} outputs" in out
  summary = helpers.read_json(os.path.join(workdir, "results.json"))
  assert [r["model"] for r in summary["rows"]] == ["resnet50_v2",
                                                   "mobilenet_v2_keras"]
