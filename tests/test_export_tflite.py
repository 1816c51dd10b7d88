"""TFLite export (kd_jax.export --format=tflite, kd_jax.tflite) and predict on
.tflite files: float32 equals the in-process JAX model, float16 is close,
int8 keeps the float model's top-1 on a trained run's test split, the files
shrink as the quantisation says, the metadata inside reads back (by hand and
by TensorFlow's flatbuffer schema), and failures are one-line errors that
leave no file."""
import json
import os

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
from kd_jax.deploy import tflite
from kd_jax.deploy import tflite_runtime
from kd_jax.errors import UserError
from kd_jax.models import fast_ops
from kd_jax.models import profile
from kd_jax.study import deployment
from kd_jax.study import report
from kd_jax.train import pipeline as train
from kd_jax.train import step
from tests import helpers

# Every student of the zoo: the mobile families, the small CNNs and MLPs,
# ResNet18 (`models.MODELS` also holds the teachers).
STUDENTS = ("mobilenet_v2", "mobilenet_v2_keras", "mobilenet_v3_small",
            "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
            "ghostnet_100", "tiny_cnn", "simple_cnn", "mlp", "mlp_small",
            "mlp_800x2", "mlp_1200x2", "resnet18")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A scratch tiny_cnn trained enough on the embedded default data that its
  predictions are confident (a barely trained model's near-ties would make
  any top-1 comparison a coin toss)."""
  c = helpers.tiny_config("method=none,student=tiny_cnn", **{
      "scratch_baseline": False, "num_epochs": 2, "max_steps_per_epoch": 40,
      "batch_size": 64, "dataset.train_limit": 2560, "dataset.eval_limit": 400})
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, workdir)
  ds = data.load(c)
  images = predict.to_model_input(ds.test.images, c.dataset.image_size)
  return c, workdir, ds, images


def _in_process_probs(c, workdir, stage, images_NxSxSx3):
  """The training code's view: restored variables, step.Preprocess, the
  model in eval mode, class grouping, softmax."""
  variables = helpers.restore_raw(
      os.path.join(workdir, stage, "checkpoints", "best"), "model")[1]
  meta = helpers.read_json(os.path.join(workdir, stage, "results.json"))
  k = variables["params"]["head"]["kernel"].shape[-1]
  model = models.get_model(meta["model"], num_classes=k)
  x = step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(images_NxSxSx3))
  logits = model.apply(variables, x, train=False)
  subclasses = logits.shape[-1] // meta["num_classes"]
  return np.asarray(jax.nn.softmax(step.class_logits(logits, subclasses)))


def _schema_metadata(blob):
  """kd_jax's metadata as TensorFlow's flatbuffer schema reads it."""
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
  (entry,) = [m for m in model.metadata if m.name == b"kd_jax"]
  return json.loads(bytes(model.buffers[entry.buffer].data))


@pytest.fixture(scope="module")
def float_export(trained_run, tmp_path_factory):
  _, workdir, _, _ = trained_run
  out = str(tmp_path_factory.mktemp("tfl") / "student.tflite")
  return out, export.export_tflite(workdir, out)


def test_float32_tflite_equals_in_process_model(trained_run, float_export):
  c, workdir, ds, images = trained_run
  out, info = float_export
  blob = open(out, "rb").read()
  assert tflite_runtime.is_tflite(blob[:8]) and len(blob) == info["bytes"]
  meta = tflite_runtime.read_metadata(blob)
  assert meta == _schema_metadata(blob)  # hand-read == schema-read
  assert meta == {k: v for k, v in info.items() if k != "bytes"}
  assert meta["class_names"] == list(ds.class_names)
  assert (meta["model"], meta["image_size"], meta["quantize"],
          meta["batch_size"]) == ("tiny_cnn", 28, "none", 1)
  ref = _in_process_probs(c, workdir, "student", images)
  one = tflite_runtime.Model(blob, num_threads=1)
  assert one.input_shape == (1, 28, 28, 3) and one.num_threads == 1
  probs = one.call(images)
  np.testing.assert_allclose(probs, ref, atol=1e-4, rtol=0)
  every = tflite_runtime.Model(blob)  # all CPUs
  assert every.num_threads == tflite_runtime.all_threads()
  np.testing.assert_allclose(every.call(images[:50]), ref[:50], atol=1e-4, rtol=0)
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert np.mean(probs.argmax(-1) == ds.test.labels) == pytest.approx(
      res["test"]["accuracy"], abs=1.5 / len(images))


def test_quantised_models_shrink_and_keep_predictions(trained_run,
                                                      float_export, tmp_path):
  c, workdir, _, images = trained_run
  f32_path, f32 = float_export
  ref = tflite_runtime.Model(open(f32_path, "rb").read(), 1).call(images)
  top1 = ref.argmax(-1)
  got = {}
  for q in ("float16", "dynamic_int8", "int8"):
    out = str(tmp_path / f"{q}.tflite")
    info = export.export_tflite(workdir, out, quantize=q)
    blob = open(out, "rb").read()
    assert tflite_runtime.read_metadata(blob)["quantize"] == q
    got[q] = (f32["bytes"] / info["bytes"], tflite_runtime.Model(blob, 1).call(images),
              info)
  ratio, probs, _ = got["float16"]
  assert 1.8 < ratio < 2.05, ratio
  np.testing.assert_allclose(probs, ref, atol=1e-2, rtol=0)
  for q in ("dynamic_int8", "int8"):
    ratio, probs, info = got[q]
    assert 3.4 < ratio < 4.1, (q, ratio)
    agree = np.mean(probs.argmax(-1) == top1)
    assert agree >= 0.97, (q, agree)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=0.02)
  assert got["int8"][2]["calibration_examples"] == 200
  assert got["dynamic_int8"][2]["calibration_examples"] == 0


def test_predict_reads_tflite_like_stablehlo(trained_run, float_export,
                                            tmp_path, capsys):
  _, workdir, ds, _ = trained_run
  tfl_path, _ = float_export
  bin_path = str(tmp_path / "student.bin")
  export.export_model(workdir, bin_path)
  paths = []
  for i in range(5):
    p = str(tmp_path / f"img{i}.png")
    Image.fromarray(ds.test.images[i, :, :, 0]).save(p)
    paths.append(p)
  lines = {}
  for name, path in (("bin", bin_path), ("tflite", tfl_path)):
    assert predict.main([f"--model={path}", "--threads=1", *paths]) == 0
    lines[name] = [ln.split("\t") for ln in capsys.readouterr().out.splitlines()]
  assert [ln[:2] for ln in lines["tflite"]] == [ln[:2] for ln in lines["bin"]]
  for a, b in zip(lines["tflite"], lines["bin"]):
    assert float(a[2]) == pytest.approx(float(b[2]), abs=2e-4)
  # A file that is cut short or has no kd_jax metadata: one line, exit 2.
  blob = open(tfl_path, "rb").read()
  (tmp_path / "cut.tflite").write_bytes(blob[:len(blob) // 3])
  bare = tflite.convert(lambda x: x.astype(jnp.float32).mean((1, 2)), 4)
  (tmp_path / "bare.tflite").write_bytes(bare)
  for name, expect in (("cut", "is damaged"), ("bare", "without kd_jax metadata")):
    assert predict.main([f"--model={tmp_path / name}.tflite", paths[0]]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1, err
  assert predict.main([f"--model={tfl_path}", "--threads=-1", paths[0]]) == 2
  assert "--threads must be >= 0" in capsys.readouterr().err


def test_export_errors_are_one_line_and_leave_no_file(trained_run, tmp_path,
                                                      monkeypatch, capsys):
  _, workdir, _, _ = trained_run
  out = tmp_path / "m.tflite"
  base = [f"--workdir={workdir}", f"--out={out}"]
  for flags, expect in (
      (["--format=onnx"], "--format='onnx'; allowed: stablehlo, tflite"),
      (["--format=tflite", "--quantize=int4"],
       "--quantize='int4'; allowed: none, float16, dynamic_int8, int8"),
      (["--quantize=int8"], "needs --format=tflite"),
      (["--format=tflite", "--quantize=int8", "--calibration_examples=0"],
       "--calibration_examples=0; allowed: an integer >= 1"),
      (["--format=tflite", "--platforms=cuda"], "is for --format=stablehlo")):
    assert export.main(base + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd_jax: error: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1
  # A model with an op TFLite lacks (count-leading-zeros) names the op.
  real = export.load_inference

  def unconvertible(workdir, stage="student"):
    infer, info = real(workdir, stage)
    return (lambda x: infer(x) + jax.lax.clz(x.astype(jnp.int32)).sum()
            .astype(jnp.float32)), info

  monkeypatch.setattr(export, "load_inference", unconvertible)
  assert export.main(base + ["--format=tflite"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("kd_jax: error: cannot export tiny_cnn (student) to "
                        "TFLite with --quantize=none: op vhlo.count_leading_zeros"), err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert os.listdir(tmp_path) == []  # no output, no temporary file
  with pytest.raises(UserError, match="no kd_jax run"):
    export.export_tflite(str(tmp_path / "nope"), str(out))


def test_padded_max_pool_quantises(tmp_path):
  """Inside fast_ops.standard_ops a padded max-pool has the fast path's
  values, and its int8 model keeps them (padding with -inf would give the
  quantiser an infinite range and a uniform output); the conversion leaves
  no standard-ops trace in JAX's cache for a later jit."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)) / 3, jnp.float32)

  def infer(x):
    y = jax.lax.conv_general_dilated(x.astype(jnp.float32) / 255, w, (1, 1),
                                     "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = fast_ops.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return jax.nn.softmax(4 * y.mean((1, 2)), axis=-1)

  x = rng.integers(0, 256, (16, 12, 12, 3), np.uint8)
  ref = np.asarray(infer(x))
  with fast_ops.standard_ops():
    np.testing.assert_allclose(np.asarray(infer(x)), ref, rtol=1e-6, atol=1e-7)
  blob = tflite.convert(infer, 12, quantize="int8", calibration=x)
  np.testing.assert_allclose(tflite_runtime.Model(blob, 1).call(x), ref, atol=0.03)
  # JAX's trace cache does not know fast_ops' context: jitting `infer` at
  # the export's shape afterwards still gets the fast (shifted-slice) path.
  assert "reduce_window_max" not in str(jax.make_jaxpr(jax.jit(infer))(x[:1]))


def _fake_profile(name, classes, size, timing):
  return {"gflops": 0.01, "latency_ms": 2.0}  # 500 frames/s


def test_report_tflite_columns_and_int8_budget(trained_run, tmp_path,
                                               monkeypatch, capsys):
  """The deployment table's TFLite figures for a study whose one cell is
  the trained run; the int8 budget basis; the cache."""
  _, workdir, ds, images = trained_run
  study = tmp_path / "study"
  study.mkdir()
  os.symlink(workdir, study / "student-tiny_cnn__method-none__seed-0")
  out = report.make_report(str(study), str(tmp_path / "r"), min_fps=1,
                           max_mb=0.2, profile_fn=_fake_profile, tflite=True)
  (d,) = out["deployment"]
  assert d["meets_budget"] == "no"  # float32: 0.4 MB of weights
  i8 = str(tmp_path / "i8.tflite")
  info = export.export_tflite(workdir, i8, quantize="int8")
  probs = tflite_runtime.Model(open(i8, "rb").read()).call(images)
  assert d["int8_test_accuracy"] == pytest.approx(
      np.mean(probs.argmax(-1) == ds.test.labels))
  assert d["int8_test_accuracy"] == pytest.approx(d["test_accuracy"], abs=0.03)
  # (the metadata's checkpoint path differs: the study reaches it by a link)
  assert d["tflite_int8_mb"] == pytest.approx(info["bytes"] / 1e6, abs=1e-3)
  assert 3.4 < d["tflite_f32_mb"] / d["tflite_int8_mb"] < 4.1
  for k in ("f32_ms_1t", "f32_ms_all", "int8_ms_1t", "int8_ms_all"):
    assert 0 < d[f"tflite_{k}"] < 1e3, k
  assert d["int8_frames_per_s"] == pytest.approx(1e3 / d["tflite_int8_ms_all"])
  md = out["markdown"]
  assert "### TFLite (LiteRT) at batch 1" in md and "(float32 weights)" in md
  assert f"| tiny_cnn | {d['tflite_f32_mb']:.2f} | {d['tflite_int8_mb']:.2f} |" in md
  # The int8 basis, from the cache: nothing is measured again.
  monkeypatch.setattr(deployment, "measure_tflite", None)
  again = report.make_report(str(study), str(tmp_path / "r"), min_fps=1,
                             max_mb=0.2, profile_fn=_fake_profile,
                             deploy_format="int8")
  (d8,) = again["deployment"]
  assert d8["meets_budget"] == "yes" and d8["tflite_int8_mb"] == d["tflite_int8_mb"]
  assert "(the int8 TFLite file, all threads)" in again["markdown"]
  assert report.main([str(study), "--deploy_format=int4"]) == 2
  err = capsys.readouterr().err
  assert err.strip() == ("kd_jax: error: --deploy_format='int4'; allowed: "
                         "float32, int8")


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_every_student_converts(name):
  """Random weights at 32 px, 4 classes: float32 equals JAX; int8 converts
  and gives probabilities (random weights say nothing of its accuracy)."""
  size, k = 32, 4
  model = models.get_model(name, num_classes=k)
  variables = jax.device_put(profile.random_variables(name, k, size))

  def infer(x):
    x = data.preprocess(x, image_size=size, normalization="half")
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)

  x = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), np.uint8)
  ref = np.asarray(jax.jit(infer)(x))
  f32 = tflite.convert(infer, size)
  np.testing.assert_allclose(tflite_runtime.Model(f32, 1).call(x), ref, atol=1e-4, rtol=0)
  int8 = tflite.convert(infer, size, quantize="int8", calibration=x)
  probs = tflite_runtime.Model(int8).call(x)
  assert probs.shape == (8, k)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=0.03)
  # Small models keep relatively more per-channel scales and int32 biases.
  assert 2.5 < len(f32) / len(int8) < 4.1


@pytest.mark.slow
def test_subclass_teacher_and_cli_end_to_end(tmp_path):
  """Subclass grouping inside the TFLite model; the commands in
  subprocesses print kd_jax's lines only."""
  c = helpers.tiny_config("dataset=digits,method=subclass,subclasses=2")
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  ds = data.load(c)
  images = predict.to_model_input(ds.test.images, c.dataset.image_size)
  for stage in ("teacher", "student"):
    out = str(tmp_path / f"{stage}.tflite")
    info = export.export_tflite(workdir, out, stage=stage)
    assert info["subclasses"] == 2 and info["num_classes"] == 10
    probs = tflite_runtime.Model(open(out, "rb").read(), 1).call(images)
    np.testing.assert_allclose(probs, _in_process_probs(c, workdir, stage, images),
                               atol=1e-4, rtol=0)
  model = str(tmp_path / "cli.tflite")
  r = helpers.run_cli_module("kd_jax.export", "--format=tflite", "--quantize=int8",
                             f"--workdir={workdir}", f"--out={model}")
  assert r.returncode == 0 and r.stderr == "", r.stderr
  assert r.stdout.startswith("exported ") and "quantize int8" in r.stdout
  assert len(r.stdout.strip().splitlines()) == 1, r.stdout
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f"d{i}.png"))
    Image.fromarray(ds.test.images[i, :, :, 0]).save(paths[-1])
  r = helpers.run_cli_module("kd_jax.predict", f"--model={model}", *paths)
  assert r.returncode == 0 and r.stderr == "", r.stderr
  int8 = tflite_runtime.Model(open(model, "rb").read()).call(images[:3])
  for line, path, pr in zip(r.stdout.splitlines(), paths, int8):
    assert line.split("\t")[:2] == [path, ds.class_names[int(pr.argmax())]]
