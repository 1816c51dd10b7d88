"""kd_jax.models.convert: torchvision / timm state dicts as zoo variables.

Each zoo model imports a randomly initialised torchvision / timm model (BN
statistics randomised so they matter) and must give the same logits as torch
at 224 and 112 px, in float32 under JAX's default settings.
"""
import functools
import sys

import jax
import numpy as np
import pytest
# The 'interop' extra (the README's test command installs it): these tests
# run in CI, never skipped.
import safetensors.torch as safetensors_torch
import timm
import torch
import torchvision

from kd_jax import models
from kd_jax import weight_spec
from kd_jax.errors import UserError
from kd_jax.models.interop import convert
from kd_jax.train import pretrained
from tests import helpers

# name -> the test file's format: .pth for a few, so both readers are covered.
CASES = {
    "resnet18": ".pth",
    "resnet50": ".safetensors",
    "vgg16": ".safetensors",
    "vgg16_bn": ".safetensors",
    "mobilenet_v2": ".safetensors",
    "mobilenet_v3_small": ".pth",
    "mobilenet_v3_large": ".safetensors",
    "shufflenet_v2_x0_5": ".safetensors",
    "shufflenet_v2_x1_0": ".pth",
    "ghostnet_100": ".safetensors",
}
TOLERANCE = 1e-4
LOGIT_SCALE = 10.0  # max |logit| of the test models: ImageNet-like magnitudes


def torch_model(name, seed=0):
  """The reference model in eval mode, with random weights and BN statistics
  and its classifier scaled so that logits reach about LOGIT_SCALE."""
  torch.manual_seed(seed)
  if name == "ghostnet_100":
    model = timm.create_model(name, pretrained=False)
  else:
    model = getattr(torchvision.models, name)(weights=None)
  linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    model.eval()
    # Logits are linear in the head: one scale makes every model's logits
    # O(10), so the absolute tolerance means the same for all of them.
    x = torch.from_numpy(images(112, seed=1)[0])
    scale = LOGIT_SCALE / model(x).abs().max()
    linears[-1].weight.mul_(scale)
    linears[-1].bias.mul_(scale)
  return model


def images(size, seed=0):
  """(NCHW, NHWC) float32 batch of 2."""
  x = np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)
  return x, x.transpose(0, 2, 3, 1)


def save(model, path):
  state = model.state_dict()
  if path.endswith(".pth"):
    torch.save(state, path)
  else:
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                                path)
  return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("interop") / "resnet18.pth")
  return save(torch_model("resnet18"), path)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_torch(name, tmp_path):
  model = torch_model(name)
  path = save(model, str(tmp_path / f"{name}{CASES[name]}"))
  variables = convert.import_weights(name, path, num_classes=1000)
  flax_model = models.get_model(name, num_classes=1000)
  forward = jax.jit(functools.partial(flax_model.apply, train=False))
  diffs = {}
  for size in (224, 112):
    x_nchw, x_nhwc = images(size)
    with torch.no_grad():
      want = model(torch.from_numpy(x_nchw)).numpy()
    got = np.asarray(forward(variables, x_nhwc))
    diffs[size] = float(np.abs(got - want).max())
  print(f"{name}: max |logit diff| {diffs}")
  assert all(d <= TOLERANCE for d in diffs.values()), diffs


def flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_other_class_count_reinitialises_only_the_head(resnet18_file,
                                                       monkeypatch):
  full = flat(convert.import_weights("resnet18", resnet18_file,
                                     num_classes=1000))
  fresh = convert.init_variables("resnet18", 4)
  calls = []

  def init_variables(*args, **kw):  # the one jitted init this test compiles
    calls.append(args)
    return fresh
  monkeypatch.setattr(convert, "init_variables", init_variables)
  result = convert.import_weights_full("resnet18", resnet18_file,
                                       num_classes=4)
  assert result.head_reinitialised and calls == [("resnet18", 4)]
  got = flat(result.variables)
  head = {k for k in got if k.startswith("['params']['fc']")}
  assert head == {"['params']['fc']['kernel']", "['params']['fc']['bias']"}
  assert set(got) == set(full)
  for key in set(got) - head:
    np.testing.assert_array_equal(got[key], full[key], err_msg=key)
  np.testing.assert_array_equal(got["['params']['fc']['kernel']"],
                                fresh["params"]["fc"]["kernel"])
  assert got["['params']['fc']['kernel']"].shape == (512, 4)
  assert result.file_outputs == 1000  # the file's own head, for messages


def test_a_frozen_teacher_with_another_class_count_names_both(resnet18_file):
  with pytest.raises(UserError) as e:
    pretrained.frozen_variables(resnet18_file, model_name="resnet18",
                                outputs=4, sharding_=None)
  assert str(e.value) == (
      f"teacher weights {resnet18_file}: the file's classifier has 1000 "
      "outputs, this run's resnet18 needs 4 (one per class of the data); a "
      "frozen teacher needs its own classifier (use teacher.init_from to "
      "fine-tune it first)")


def test_a_whole_pickled_model_says_to_save_the_state_dict(tmp_path):
  path = str(tmp_path / "model.pth")
  torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), path)  # not a state dict
  with pytest.raises(weight_spec.WeightImportError) as e:
    convert.import_weights("resnet18", path, num_classes=4)
  msg = str(e.value)
  assert msg == (f"{path!r} holds a whole pickled model (torch.save(model)), "
                 "not a state dict: save torch.save(model.state_dict(), PATH) "
                 "and pass that file, or pass --trust_pickle to unpickle it "
                 "with torch (it runs code the file names: only for a file "
                 "you trust)")
  assert "\n" not in msg and "\x1b" not in msg


def test_trust_pickle_reads_a_whole_model_as_its_state_dict(resnet18_file,
                                                            tmp_path,
                                                            monkeypatch):
  """With --trust_pickle (its environment variable) a torch.save(model)
  file imports to the same variables as the model's state dict."""
  path = str(tmp_path / "whole.pth")
  torch.save(torch_model("resnet18"), path)
  monkeypatch.setenv(weight_spec.TRUST_PICKLE_ENV, "1")
  got = flat(convert.import_weights("resnet18", path, num_classes=1000))
  want = flat(convert.import_weights("resnet18", resnet18_file,
                                     num_classes=1000))
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow
def test_trust_pickle_flag_on_the_command_line(tmp_path):
  """`kd_jax.main --trust_pickle` lets the teacher file be unpickled: the
  run gets past the file (here to the class-count check), which without the
  flag stops at the pickled-model line."""
  path = str(tmp_path / "whole.pth")
  torch.save(torch_model("resnet18"), path)
  args = ("--config=configs/quickstart.py:runlocal,dataset=digits",
          "--config.teacher.name=resnet18",
          f"--config.teacher.checkpoint=torchvision:{path}",
          f"--workdir={tmp_path / 'run'}")
  plain = helpers.run_cli(*args)
  trusted = helpers.run_cli(*args, "--trust_pickle")
  assert plain.returncode == 2 and "--trust_pickle" in plain.stderr
  assert trusted.returncode == 2, trusted.stderr
  assert "classifier has 1000 outputs" in trusted.stderr
  assert not (tmp_path / "run").exists()


def test_wrapped_state_dict_with_module_prefix(resnet18_file, tmp_path):
  state = torch.load(resnet18_file, weights_only=True)
  wrapped = {"epoch": 3, "model": {"module." + k: v for k, v in state.items()}}
  path = str(tmp_path / "ckpt.pt")
  torch.save(wrapped, path)
  want = flat(convert.import_weights("resnet18", resnet18_file,
                                     num_classes=1000))
  got = flat(convert.import_weights("resnet18", path, num_classes=1000))
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_bfloat16_safetensors(resnet18_file, tmp_path):
  state = torch.load(resnet18_file, weights_only=True)
  path = str(tmp_path / "bf16.safetensors")
  safetensors_torch.save_file(
      {k: v.to(torch.bfloat16) if v.is_floating_point() else v
       for k, v in state.items()}, path)
  got = convert.import_weights("resnet18", path, num_classes=1000)
  want = state["layer2.0.conv1.weight"].to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(
      got["params"]["layer2_0"]["conv1"]["kernel"], want.transpose(2, 3, 1, 0))


def one_line_error(name, path, num_classes=1000):
  with pytest.raises(weight_spec.WeightImportError) as info:
    convert.import_weights(name, path, num_classes=num_classes)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def test_resnet18_file_into_resnet50_names_the_tensor(resnet18_file):
  message = one_line_error("resnet50", resnet18_file)
  assert "layer1.0.conv1.weight (64, 64, 3, 3)" in message, message
  assert "layer1_0/conv1/kernel (1, 1, 64, 64)" in message, message


def test_tampered_shape_names_the_tensor(resnet18_file, tmp_path):
  from safetensors.numpy import save_file
  state = convert.read_state_dict(resnet18_file)
  state["layer3.1.bn2.running_var"] = np.ones(100, np.float32)
  path = str(tmp_path / "bad.safetensors")
  save_file(state, path)
  message = one_line_error("resnet18", path)
  assert "layer3.1.bn2.running_var (100,)" in message, message
  assert "layer3_1/bn2/var (256,)" in message, message


def test_missing_layers_are_one_line(resnet18_file, tmp_path):
  from safetensors.numpy import save_file
  state = {k: v for k, v in convert.read_state_dict(resnet18_file).items()
           if not k.startswith("layer4.1.")}
  path = str(tmp_path / "short.safetensors")
  save_file(state, path)
  message = one_line_error("resnet18", path)
  assert "the file has 37 conv/linear/BatchNorm layers, resnet18 has 41" \
      in message, message


def test_unreadable_file_is_one_line(tmp_path):
  for suffix in (".safetensors", ".pth"):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"not a weight file\n" * 10)
    message = one_line_error("resnet18", str(path))
    assert "cannot read weight file" in message, message


def test_pth_without_torch_says_how_to_install(resnet18_file, tmp_path,
                                               monkeypatch):
  from safetensors.numpy import save_file
  safetensors_path = str(tmp_path / "resnet18.safetensors")
  save_file(convert.read_state_dict(resnet18_file), safetensors_path)
  monkeypatch.setitem(sys.modules, "torch", None)
  message = one_line_error("resnet18", resnet18_file)
  assert "pip install 'kd_jax[interop]'" in message, message
  assert ".safetensors" in message, message
  # .safetensors files need no torch.
  assert convert.read_state_dict(safetensors_path)
