"""Shared test helpers: tiny configs, image folders, subprocess CLI runs."""
import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(arg="", **overrides):
  """The quickstart config in tiny mode (what tests and Colab use)."""
  sys.path.insert(0, REPO)
  from configs import quickstart
  from kd_jax import config_lib
  c = quickstart.get_config("runlocal" + ("," + arg if arg else ""))
  for path, value in overrides.items():
    config_lib.set_path(c, path, value)
  return c


def load_config(filename, arg=None):
  """configs/<filename>'s get_config(arg)."""
  from kd_jax import config_lib
  return config_lib.load_config_module(
      os.path.join(REPO, "configs", filename)).get_config(arg)


def write_image_folder(root, classes=("A2C", "A4C", "PLAX"), per_split=None,
                       size=20, seed=0):
  """Class-coloured noise images, mixed PNG/JPEG and greyscale/RGB."""
  from PIL import Image
  per_split = per_split or {"train": 40, "val": 12, "test": 12}
  rng = np.random.default_rng(seed)
  for split, n in per_split.items():
    for ci, cls in enumerate(classes):
      d = os.path.join(root, split, cls)
      os.makedirs(d, exist_ok=True)
      for i in range(n):
        base = np.zeros((size + i % 3, size, 3), np.float32)
        base[..., ci % 3] = 200.0  # the class is visible in the colour
        img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        if i % 4 == 0:
          Image.fromarray(img).convert("L").save(os.path.join(d, f"f{i}.png"))
        elif i % 4 == 1:
          Image.fromarray(img).save(os.path.join(d, f"f{i}.jpg"), quality=95)
        else:
          Image.fromarray(img).save(os.path.join(d, f"f{i}.png"))
  return root


def run_cli(*args, env=None, timeout=600):
  """`python -m kd_jax.main ARGS` in a subprocess; returns CompletedProcess."""
  return run_cli_module("kd_jax.main", *args, env=env, timeout=timeout)


def run_cli_module(module, *args, env=None, timeout=600):
  """`python -m MODULE ARGS` in a subprocess; returns CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", module, *args],
                        cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def one_error_line(r, message=""):
  """The CLI contract for bad input: exit status 2, exactly one
  `kd_jax: error:` line on stderr (containing `message`), no traceback.
  Returns that line."""
  assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
  lines = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(lines) == 1, r.stderr[-1500:]
  assert message in lines[0], lines[0]
  assert "Traceback" not in r.stderr
  return lines[0]


def preempt_at(monkeypatch, at):
  """`preemption.requested` that fires once, at global step `at`, as a
  SIGTERM would; returns the list of steps it fired at."""
  from kd_jax.train import preemption
  fired = []

  def requested(step, every):
    del every
    if step == at and not fired:
      fired.append(step)
      return True
    return False
  monkeypatch.setattr(preemption, "requested", requested)
  return fired


def write_binary_predictions(path, seed, n, positive):
  """A run's `test_predictions.npz` of a binary task: `n` labels, about
  `positive` of them 1, with probabilities that rank them imperfectly."""
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=n) < positive).astype(np.int32)
  p1 = np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.2, n), 0.01, 0.99)
  np.savez(path, probs=np.stack([1 - p1, p1], -1).astype(np.float32),
           labels=labels)


def read_json(path):
  with open(path) as f:
    return json.load(f)


def restore_raw(manager_dir, item):
  """Restores one array item of the newest checkpoint onto this process's
  first device (whatever device topology saved it)."""
  import jax

  from kd_jax.train import checkpointing
  if item == "state":  # 'latest' holds the train state packed
    return checkpointing.read_packed_state(manager_dir)
  mngr = ocp.CheckpointManager(
      manager_dir, item_handlers={item: ocp.StandardCheckpointHandler()})
  step = mngr.latest_step()
  meta = mngr.item_metadata(step)[item]
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
  out = mngr.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(target)}))
  mngr.close()
  return step, out[item]


def train_digits_teacher(root):
  """Trains the tiny simple_cnn on digits in `root` (no distillation) and
  returns its checkpoint directory, for `teacher.checkpoint`."""
  from kd_jax.train import pipeline as train
  c = tiny_config("dataset=digits,method=none,student=simple_cnn",
                  scratch_baseline=False)
  train.train_and_evaluate(c, str(root))
  return os.path.join(str(root), "student")


ECHO_VIEWS = ("A2C", "A4C", "PLAX", "PSAX")


def _echo_frame(view, t, rng, size):
  """One grey frame of `view`: a bright shape of the view's kind that moves
  with `t` (the heart beating, crudely) on speckle noise."""
  yy, xx = np.mgrid[:size, :size] / size
  cx = 0.5 + 0.15 * np.sin(2 * np.pi * t / 8)
  shapes = {"A2C": (xx - cx) ** 2 + (yy - 0.5) ** 2 < 0.06,  # disc
            "A4C": (abs(xx - cx) < 0.2) & (abs(yy - 0.5) < 0.2),  # square
            "PLAX": abs(yy - 0.3 - 0.4 * (xx - cx + 0.5)) < 0.06,  # slant bar
            "PSAX": abs((xx - cx) ** 2 + (yy - 0.5) ** 2 - 0.06) < 0.02}  # ring
  img = rng.normal(60, 25, (size, size)) + 140 * shapes[view]
  return np.clip(img, 0, 255).astype(np.uint8)


def write_echo_videos(root, patients=8, frames=12, size=48, seed=0):
  """An echo-like set: for each of 4 views, `patients` patients with one
  MJPEG AVI each (moving shape + noise); returns (videos dir, labels CSV)
  for `python -m kd_jax.prepare frames`."""
  import av
  rng = np.random.default_rng(seed)
  videos = os.path.join(root, "videos")
  os.makedirs(videos, exist_ok=True)
  rows = []
  for v, view in enumerate(ECHO_VIEWS):
    for p in range(patients):
      name = f"{view}_p{p}.avi"
      with av.open(os.path.join(videos, name), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p"
        for t in range(frames):
          grey = _echo_frame(view, t + p, rng, size)
          frame = av.VideoFrame.from_ndarray(np.stack([grey] * 3, -1),
                                             format="rgb24")
          out.mux(stream.encode(frame))
        out.mux(stream.encode())
      rows.append((name, view, f"P{v}{p:02d}"))
  labels = os.path.join(root, "labels.csv")
  with open(labels, "w") as f:
    f.write("FileName,label,patient_id\n")
    f.writelines(",".join(r) + "\n" for r in rows)
  return videos, labels
