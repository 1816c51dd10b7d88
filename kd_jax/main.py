"""Command line: `python -m kd_jax.main --config=configs/X.py[:arg] --workdir=DIR`.

Bad input (unknown names, T <= 0, alpha outside [0, 1], missing data, a
mismatched teacher checkpoint, ...) exits with status 2 and one line on
stderr, before anything in the workdir is written.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kd_jax.config_lib import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a cell arg: path.py:key=value,...",
    lock_config=True)
flags.DEFINE_string("workdir", None,
                    "Run directory (default: workdirs/<config name>[_<arg>]).")


def default_workdir(config_path: str) -> str:
  path, _, arg = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + "".join(c if c.isalnum() or c in "-.=" else "_" for c in arg)
  return os.path.join("workdirs", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  from kd_jax import sharding, train  # heavy imports after flag parsing
  try:
    sharding.maybe_initialize_distributed()
    workdir = FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(FLAGS["config"]))
    train.train_and_evaluate(FLAGS.config, workdir)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  try:
    app.run(main)
  except UserError as e:  # raised while loading the config file (cell arg)
    print(f"kd_jax: error: {e}", file=sys.stderr)
    sys.exit(2)
