"""Export (jax.export) and predict: the exported function equals the
in-process model, any batch size, subclass grouping inside, predict needs no
training code, and bad files are one-line errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.deploy import export
from kd_jax.deploy import predict
from kd_jax.errors import UserError
from kd_jax.train import pipeline as train
from kd_jax.train import step
from tests import helpers


def _run(tmp_path_factory, arg):
  c = helpers.tiny_config(arg)
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, workdir)
  return c, workdir, data.load(c)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  return _run(tmp_path_factory, "")


@pytest.fixture(scope="module")
def subclass_run(tmp_path_factory):
  return _run(tmp_path_factory, "dataset=digits,method=subclass,subclasses=2")


def _in_process_probs(c, workdir, stage, images_NxSxSx3):
  """The training code's view: restored variables, step.Preprocess, the
  model in eval mode, class grouping, softmax."""
  variables = helpers.restore_raw(
      os.path.join(workdir, stage, "checkpoints", "best"), "model")[1]
  meta = helpers.read_json(os.path.join(workdir, stage, "results.json"))
  k = variables["params"]["head"]["kernel"].shape[-1] if "head" in variables[
      "params"] else None
  model = models.get_model(meta["model"], num_classes=k or meta["num_classes"])
  x = step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(images_NxSxSx3))
  logits = model.apply(variables, x, train=False)
  subclasses = logits.shape[-1] // meta["num_classes"]
  return np.asarray(jax.nn.softmax(step.class_logits(logits, subclasses)))


def _three_channels(images_NxHxWx1):
  return np.repeat(images_NxHxWx1, 3, axis=-1)


def test_exported_student_equals_in_process_model(plain_run, tmp_path):
  c, workdir, ds = plain_run
  out = str(tmp_path / "student.bin")
  info = export.export_model(workdir, out)
  assert info["model"] == c.student.name and info["image_size"] == 28
  assert info["class_names"] == list(ds.class_names)
  with open(out, "rb") as f:
    assert f.read(len(export.MAGIC)) == export.MAGIC
  # Readable by the team as open() would leave it, not mkstemp's 0600.
  mask = os.umask(0)
  os.umask(mask)
  assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask
  assert os.stat(os.path.join(workdir, "results.json")).st_mode & 0o777 == (
      0o666 & ~mask)
  meta, exported = predict.load_model(out)
  assert meta["num_classes"] == ds.num_classes
  images = _three_channels(ds.test.images)  # 28x28 greyscale -> RGB
  probs = np.asarray(exported.call(images))
  np.testing.assert_allclose(probs, _in_process_probs(c, workdir, "student", images),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  # Batch-polymorphic: 1 and 7 images give the rows of the full batch.
  for n in (1, 7):
    np.testing.assert_allclose(np.asarray(exported.call(images[:n])), probs[:n],
                               rtol=1e-5, atol=1e-6)
  # Its test accuracy is the one the run reported.
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert np.mean(probs.argmax(-1) == ds.test.labels) == pytest.approx(
      res["test"]["accuracy"], abs=1e-9)


def test_subclass_teacher_exports_class_probabilities(subclass_run, tmp_path):
  c, workdir, ds = subclass_run
  for stage in ("teacher", "student"):
    out = str(tmp_path / f"{stage}.bin")
    info = export.export_model(workdir, out, stage=stage)
    assert info["subclasses"] == 2 and info["num_classes"] == 10
    _, exported = predict.load_model(out)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    probs = np.asarray(exported.call(images))
    assert probs.shape == (5, 10)  # classes, not the 20 subclasses
    np.testing.assert_allclose(probs, _in_process_probs(c, workdir, stage, images),
                               rtol=1e-5, atol=1e-6)


def test_predict_cli_needs_no_training_code(plain_run, tmp_path):
  c, workdir, ds = plain_run
  model = str(tmp_path / "student.bin")
  export.export_model(workdir, model)
  paths = []
  for i in range(4):
    p = str(tmp_path / f"img{i}.png")
    Image.fromarray(ds.test.images[i, :, :, 0]).save(p)
    paths.append(p)
  _, exported = predict.load_model(model)
  probs = np.asarray(exported.call(_three_channels(ds.test.images[:4])))
  code = ("import sys; from kd_jax import predict; rc = predict.main(sys.argv[1:]); "
          "heavy = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
          "('flax', 'optax', 'orbax', 'tensorflow', 'ml_collections', 'clu')} | "
          "{m for m in sys.modules if m in ('kd_jax.train', 'kd_jax.models', "
          "'kd_jax.config_lib')}); print('HEAVY', heavy); sys.exit(rc)")
  r = subprocess.run([sys.executable, "-c", code, f"--model={model}", *paths],
                     cwd=helpers.REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[-1] == "HEAVY []"
  for line, path, pr in zip(lines, paths, probs):
    p, name, prob = line.split("\t")
    assert p == path and name == ds.class_names[int(pr.argmax())]
    assert float(prob) == pytest.approx(float(pr.max()), abs=1e-4)


def test_export_and_predict_errors(plain_run, tmp_path):
  _, workdir, _ = plain_run
  with pytest.raises(UserError, match="no kd_jax run"):
    export.export_model(str(tmp_path / "nope"), str(tmp_path / "x.bin"))
  with pytest.raises(UserError, match="no stage 'assistant1'.*it has: .*student"):
    export.export_model(workdir, str(tmp_path / "x.bin"), stage="assistant1")
  assert not os.path.exists(tmp_path / "x.bin")
  model = str(tmp_path / "m.bin")
  export.export_model(workdir, model)
  bad_img = tmp_path / "bad.png"
  bad_img.write_bytes(b"not an image")
  truncated = tmp_path / "trunc.bin"
  truncated.write_bytes(open(model, "rb").read()[:200])

  def cli(*args):
    r = subprocess.run([sys.executable, "-m", "kd_jax.predict", *args],
                       cwd=helpers.REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=helpers.REPO))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr

  assert "cannot read image" in cli(f"--model={model}", str(bad_img))
  assert "does not exist" in cli(f"--model={model}", str(tmp_path / "none.png"))
  assert "not a kd_jax exported model" in cli(f"--model={bad_img}", str(bad_img))
  assert "is damaged" in cli(f"--model={truncated}", str(bad_img))
  r = subprocess.run([sys.executable, "-m", "kd_jax.export", f"--workdir={workdir}",
                      f"--out={tmp_path / 'y.bin'}", "--platforms=gpu"],
                     cwd=helpers.REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert r.returncode == 2 and "unknown platform" in r.stderr
  assert not os.path.exists(tmp_path / "y.bin")
