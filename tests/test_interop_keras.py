"""Keras applications' weights in the zoo's resnet50_v2 / mobilenet_v2_keras.

Keras builds ResNet50V2 / MobileNetV2 with random weights (BN statistics,
scales and offsets and every bias random too, so each must land in the right
place), saves them in each Keras format, and `kd_jax.models.import_weights`
reads them back: the logits agree with Keras' (pre-softmax) at 224 and 112
px. Keras needs a static input shape with include_top, so it builds one
model per size (MobileNetV2's stride-2 paddings depend on it: 112 px gives
an odd 7x7 map before block_13). One `import_weights` per model, since its
jitted init compiles for ~15 s on a small CPU; the other formats go through
`keras_weights.assign` with the imported variables as the template and must
give the same variables.
"""
import io
import zipfile

import h5py
import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")
# Keras' TensorFlow backend calls np.array on tensors, which numpy 2 warns
# about once per weight: thousands of lines that say nothing about kd_jax.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

from kd_jax import models  # noqa: E402
from kd_jax import weight_spec
from kd_jax.models.interop import keras_weights

KERAS = {"resnet50_v2": "ResNet50V2", "mobilenet_v2_keras": "MobileNetV2"}
SIZES = (224, 112)
# Keras' count_params (BN moving statistics included) with 1000 classes and
# without the head, and its trainable part with 1000 classes.
KERAS_TOTAL = {"resnet50_v2": 25_613_800, "mobilenet_v2_keras": 3_538_984}
KERAS_NOTOP = {"resnet50_v2": 23_564_800, "mobilenet_v2_keras": 2_257_984}
KERAS_TRAINABLE = {"resnet50_v2": 25_568_360, "mobilenet_v2_keras": 3_504_872}
FEATURES = {"resnet50_v2": 2048, "mobilenet_v2_keras": 1280}


def _randomise(model, rng):
  """Random BN statistics, scales, offsets and biases (Keras' init leaves
  them 0 / 1, which would hide a swapped or dropped tensor)."""
  for layer in model.layers:
    values = []
    for w in layer.weights:
      shape = tuple(w.shape)
      if w.name in ("gamma", "moving_variance"):
        values.append(rng.uniform(0.5, 1.5, shape))
      elif w.name in ("beta", "bias", "moving_mean"):
        values.append(rng.normal(0.0, 0.1, shape))
      else:
        values.append(np.asarray(w.numpy()))
    if values:
      layer.set_weights([v.astype(np.float32) for v in values])


def _save_legacy_weights(model, path, keras2_names=False):
  """A weights-only legacy .h5 as keras.applications downloads are; with
  `keras2_names`, Keras 2's weight names ('conv/kernel:0',
  'dw/depthwise_kernel:0') instead of Keras 3's ('conv/kernel')."""
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
    if not keras2_names:
      return
    for layer in model.layers:
      group, renamed = f[layer.name], []
      for name in group.attrs["weight_names"]:
        name = name.decode() if isinstance(name, bytes) else name
        new = name + ":0"
        if isinstance(layer, keras.layers.DepthwiseConv2D):
          new = new.replace("/kernel:", "/depthwise_kernel:")
        group.move(name, new)
        renamed.append(new.encode())
      group.attrs["weight_names"] = renamed


@pytest.fixture(scope="module", params=sorted(KERAS))
def case(request, tmp_path_factory):
  """Keras models (one per size, same random weights), their saved files
  and the variables `import_weights` reads from one of them."""
  name = request.param
  keras.utils.set_random_seed(0)  # Keras' own glorot kernels, reproducibly
  ctor = getattr(keras.applications, KERAS[name])
  built = {}
  for size in SIZES:
    built[size] = ctor(weights=None, input_shape=(size, size, 3), classes=1000,
                       classifier_activation=None)
  _randomise(built[224], np.random.default_rng(0))
  built[112].set_weights(built[224].get_weights())
  d = tmp_path_factory.mktemp(name)
  files = {"weights.h5": d / "m.weights.h5", "keras": d / "m.keras",
           "legacy": d / "legacy.h5", "keras2": d / "keras2.h5"}
  built[224].save_weights(files["weights.h5"])
  built[224].save(files["keras"])
  _save_legacy_weights(built[224], files["legacy"])
  _save_legacy_weights(built[224], files["keras2"], keras2_names=True)
  if name == "mobilenet_v2_keras":  # the full-model .h5 (100 MB for resnet)
    files["full.h5"] = d / "full.h5"
    built[224].save(files["full.h5"])
  # The resnet reads a keras.applications-style download, the mobilenet a
  # .keras archive: between them, both families of formats.
  main = files["keras2" if name == "resnet50_v2" else "keras"]
  variables = models.import_weights(name, str(main), num_classes=1000)
  return dict(name=name, keras=built, files=files, variables=variables, dir=d)


@pytest.mark.parametrize("size", SIZES)
def test_logits_match_keras(case, size):
  x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3))
  x = x.astype(np.float32)
  want = np.asarray(case["keras"][size](x, training=False))
  model = models.get_model(case["name"], num_classes=1000)
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      case["variables"], x))
  assert got.shape == want.shape == (2, 1000)
  diff = float(np.abs(got - want).max())
  print(f"{case['name']} @ {size}px: max |logit diff| {diff:.2e} "
        f"(max |logit| {np.abs(want).max():.2f})")
  assert diff <= 1e-4


def test_every_format_gives_the_same_variables(case):
  want = jax.tree.leaves(case["variables"])
  for fmt, path in case["files"].items():
    got, reinit = keras_weights.assign(case["name"], case["variables"], str(path))
    assert not reinit, fmt
    assert jax.tree.structure(got) == jax.tree.structure(case["variables"]), fmt
    for a, b in zip(jax.tree.leaves(got), want):
      np.testing.assert_array_equal(a, b, err_msg=fmt)


def test_keras3_file_without_layer_names_reads_names_from_config(case, tmp_path):
  """Older Keras 3 writes no `name` attribute on a layer's vars group; in a
  .keras archive config.json's layer order gives the names."""
  src = case["files"]["keras"]
  with zipfile.ZipFile(src) as z:
    members = {n: z.read(n) for n in z.namelist()}
  buf = io.BytesIO(members["model.weights.h5"])
  with h5py.File(buf, "a") as f:
    f.visititems(lambda p, o: o.attrs.__delitem__("name")
                 if "name" in o.attrs else None)
  members["model.weights.h5"] = buf.getvalue()
  stripped = tmp_path / "old.keras"
  with zipfile.ZipFile(stripped, "w") as z:
    for n, data in members.items():
      z.writestr(n, data)
  assert (keras_weights.read_layers(str(stripped)).keys()
          == keras_weights.read_layers(str(src)).keys())
  got, _ = keras_weights.assign(case["name"], case["variables"], str(stripped))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(case["variables"])):
    np.testing.assert_array_equal(a, b)


def test_parameter_counts_equal_keras(case):
  name, km = case["name"], case["keras"][224]
  head = km.get_layer("predictions").count_params()
  assert km.count_params() == KERAS_TOTAL[name]
  assert km.count_params() - head == KERAS_NOTOP[name]
  trainable = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
  assert models.count_params(name, 1000) == trainable == KERAS_TRAINABLE[name]
  for classes in (1000, 2):
    shapes = models.init_shapes(name, classes, 224)
    total = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert total == KERAS_NOTOP[name] + (FEATURES[name] + 1) * classes
  # the brief's 2-class totals, spelled out
  assert {n: KERAS_NOTOP[n] + (FEATURES[n] + 1) * 2 for n in KERAS} == {
      "resnet50_v2": 23_568_898, "mobilenet_v2_keras": 2_260_546}


def _two_class_like(variables):
  """The imported variables with a fresh 2-class head: the template that
  `import_weights(..., num_classes=2)` would hand to `assign`."""
  like = jax.tree.map(np.copy, variables)
  width = like["params"]["predictions"]["kernel"].shape[0]
  rng = np.random.default_rng(7)
  like["params"]["predictions"] = {
      "kernel": rng.normal(size=(width, 2)).astype(np.float32),
      "bias": np.zeros(2, np.float32)}
  return like


def test_notop_file_and_other_class_count_keep_the_fresh_head(case):
  name, km = case["name"], case["keras"][224]
  notop = getattr(keras.applications, KERAS[name])(
      weights=None, include_top=False, input_shape=(224, 224, 3))
  for layer in notop.layers:
    if layer.weights:
      layer.set_weights(km.get_layer(layer.name).get_weights())
  path = case["dir"] / "notop.h5"
  _save_legacy_weights(notop, path, keras2_names=True)
  like = _two_class_like(case["variables"])
  for source in (path, case["files"]["keras"]):  # no head / a 1000-class head
    got, reinit = keras_weights.assign(name, like, str(source))
    assert reinit
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(like)):
      np.testing.assert_array_equal(a, b)  # trunk: the file's; head: like's


def _error_from(name, like, path):
  with pytest.raises(weight_spec.WeightImportError) as e:
    keras_weights.assign(name, like, str(path))
  message = str(e.value)
  assert "\n" not in message
  return message


def test_mismatched_shape_and_missing_layer_are_one_line_errors(case, tmp_path):
  name = case["name"]
  layer = "conv3_block2_2_conv" if name == "resnet50_v2" else "block_3_project"
  path = tmp_path / "tampered.h5"
  path.write_bytes(case["files"]["legacy"].read_bytes())
  with h5py.File(path, "a") as f:
    key = f"{layer}/{layer}/kernel"
    shape = f[key].shape
    bad = shape[:-1] + (shape[-1] + 8,)
    del f[key]
    f[key] = np.zeros(bad, np.float32)
  message = _error_from(name, case["variables"], path)
  assert f"{layer}/kernel" in message
  assert str(tuple(shape)) in message and str(bad) in message

  with h5py.File(path, "a") as f:
    f.attrs["layer_names"] = [n for n in f.attrs["layer_names"]
                              if (n.decode() if isinstance(n, bytes) else n) != layer]
  assert repr(layer) in _error_from(name, case["variables"], path)


def test_not_a_keras_file_is_a_one_line_error(tmp_path):
  path = tmp_path / "junk.h5"
  path.write_bytes(b"not hdf5")
  like = {"params": {"predictions": {"kernel": np.zeros((4, 2), np.float32)}}}
  assert "junk.h5" in _error_from("mobilenet_v2_keras", like, path)


def test_batch_norm_without_scale_maps_by_name_and_by_order(tmp_path):
  """A BN with scale=False has no gamma: legacy files say so by weight name,
  Keras 3 files by one variable fewer (the model's BN lacks `scale` too)."""
  inputs = keras.Input((4, 4, 3))
  y = keras.layers.Conv2D(2, 1, name="c")(inputs)
  y = keras.layers.BatchNormalization(scale=False, name="bn")(y)
  km = keras.Model(inputs, y)
  _randomise(km, np.random.default_rng(3))
  km.save_weights(tmp_path / "t.weights.h5")
  _save_legacy_weights(km, tmp_path / "t.h5", keras2_names=True)
  zeros = lambda *s: np.zeros(s, np.float32)
  like = {"params": {"c": {"kernel": zeros(1, 1, 3, 2), "bias": zeros(2)},
                     "bn": {"bias": zeros(2)}},
          "batch_stats": {"bn": {"mean": zeros(2), "var": zeros(2)}}}
  beta, mean, var = (np.asarray(w.numpy()) for w in km.get_layer("bn").weights)
  for path in ("t.weights.h5", "t.h5"):
    got, reinit = keras_weights.assign("tiny", like, str(tmp_path / path))
    assert not reinit  # the model has no `predictions` head to keep
    np.testing.assert_array_equal(got["params"]["bn"]["bias"], beta)
    np.testing.assert_array_equal(got["batch_stats"]["bn"]["mean"], mean)
    np.testing.assert_array_equal(got["batch_stats"]["bn"]["var"], var)
    np.testing.assert_array_equal(got["params"]["c"]["kernel"],
                                  km.get_layer("c").kernel.numpy())


def test_shapes_suffice_as_the_template(case):
  """`like` may be `init_shapes` (no jitted init): the file fills the trunk,
  and a head it cannot fill stays a ShapeDtypeStruct for the caller."""
  shapes = models.init_shapes(case["name"], 2, 224)
  got, reinit = keras_weights.assign(case["name"], shapes,
                                     str(case["files"]["weights.h5"]))
  assert reinit
  head = got["params"].pop("predictions")
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in head.values())
  want = jax.tree.map(np.asarray, case["variables"])
  want["params"].pop("predictions")
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
