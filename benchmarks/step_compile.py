"""Compile time, HLO size and step time of the KD train step, as a single
run jits it and as a sweep vmaps it (one cell), for MobileNetV3-small at
112 px, batch 64, with the teacher's logits in the batch:

  python benchmarks/step_compile.py plain
  python benchmarks/step_compile.py sweep
"""
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from kd_jax import cpu_runtime  # noqa: E402

cpu_runtime.configure()
from kd_jax import config_lib  # noqa: E402
from kd_jax import models
from kd_jax.train import model_init
from kd_jax.train import step as step_lib  # noqa: E402
from kd_jax.train import sweep


def main(mode):
  c = config_lib.base_config()
  c.dataset.image_size, c.batch_size, c.kd.method = 112, 64, "vanilla"
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  student = models.get_model("mobilenet_v3_small", num_classes=10)
  tx = step_lib.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=1e-3, num_epochs=1,
                               steps_per_epoch=8, ctkd=False)
  p, bs = model_init.init_variables(student, c.dataset.image_size, mesh, jax.random.PRNGKey(0))
  state = step_lib.new_train_state(tx, {"student": p}, {"student": bs})
  spec = step_lib.make_spec(config_lib.read_specs(c), student, "vanilla", steps_per_epoch=8,
                            teacher=models.get_model("vgg16", num_classes=10))
  batch = {"image": np.zeros((64, 28, 28, 1), np.uint8),
           "label": np.zeros(64, np.int32),
           "teacher_logits": np.zeros((64, 10), np.float32)}
  if mode == "plain":
    fn = jax.jit(step_lib.make_train_step(spec, tx))
    args = (state, batch, step_lib.hyperparams(config_lib.read_specs(c)), None)
  else:
    fn = jax.jit(sweep.make_sweep_step(spec, tx))
    args = (jax.tree.map(lambda x: x[None], state),
            step_lib.stack_hyperparams([config_lib.read_specs(k) for k in [c]]), jnp.asarray([True]), batch, None)
  t0 = time.time()
  compiled = fn.lower(*args).compile()
  seconds = time.time() - t0
  text = compiled.as_text()
  jax.block_until_ready(compiled(*args))
  t0 = time.time()
  for _ in range(3):
    jax.block_until_ready(compiled(*args))
  print(f"{mode}: compile {seconds:.1f} s, HLO {len(text) / 1e6:.1f} MB "
        f"({len(re.findall(r'is-finite[(]', text))} is-finite ops, "
        f"{len(re.findall(r' conditional[(]', text))} conditional), "
        f"step {(time.time() - t0) / 3:.3f} s")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "sweep")
