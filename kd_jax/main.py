"""Command line: `python -m kd_jax.main --config=configs/X.py[:arg] --workdir=DIR`.

Bad input (unknown names, T <= 0, alpha outside [0, 1], missing data, a
mismatched teacher checkpoint, ...) exits with status 2 and one line on
stderr, before anything in the workdir is written.
"""
import os
import sys

from kd_jax import console

if __name__ == "__main__":  # the command: before TensorFlow or JAX is imported
  console.quiet_native_logs()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import jax  # noqa: E402

from kd_jax import config_lib  # noqa: E402
from kd_jax import cpu_runtime  # noqa: E402
from kd_jax import weight_spec  # noqa: E402
from kd_jax.errors import UserError  # noqa: E402
from kd_jax.train import pipeline as train  # noqa: E402
from kd_jax.train import preemption  # noqa: E402
from kd_jax.train import sharding  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a cell arg: path.py:key=value,...",
    lock_config=True)
flags.DEFINE_bool("overwrite", False,
                  "If the workdir holds a run of another config, move it to "
                  "<workdir>.old-<time> and start afresh.")
flags.DEFINE_bool("print_config", False,
                  "Print the config (the file, its arg string and --config.x=y "
                  "overrides), checked, and exit without training.")
flags.DEFINE_bool("trust_pickle", False,
                  "Let a .pth that holds a whole pickled torch model "
                  "(torch.save(model)) be unpickled with torch: it runs code "
                  "the file names, so only for files you trust.")
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
  if FLAGS.trust_pickle:
    os.environ[weight_spec.TRUST_PICKLE_ENV] = "1"
  try:
    config = config_lib.command_line_config(  # tiny mode: one line
        FLAGS.config, config_flags.get_config_filename(FLAGS["config"]),
        config_flags.get_override_values(FLAGS["config"]))
    if FLAGS.print_config:
      config_lib.validate(config)
      print(config, end="")
      return
    sharding.maybe_initialize_distributed()
    workdir = FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(FLAGS["config"]))
    train.train_and_evaluate(config, workdir, overwrite=FLAGS.overwrite)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    sys.exit(2)
  except preemption.Preempted as e:  # SIGTERM: checkpoint saved, resumable
    print(f"kd_jax: preempted: {e}", file=sys.stderr)
    sys.exit(143)
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # A collective failed: most likely another process of this run died.
    # Say so in one line and leave at once: JAX's exit handlers would wait
    # for (and then abort on) the dead peer.
    first = (str(e).strip().splitlines() or [""])[0][:200]
    print(f"kd_jax: error: process {jax.process_index()} of "
          f"{jax.process_count()} lost another process of this run "
          f"({type(e).__name__}: {first}); stopping. Rerun all processes to "
          "resume from the latest checkpoint.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _one_line(e: BaseException) -> str:
  """The meaningful last line of a (possibly wrapped) flag-parsing error."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  last = lines[-1] if lines else type(e).__name__
  for prefix in ("kd_jax.config_lib.UserError: ", "UserError: "):
    last = last.removeprefix(prefix)
  return last


def parse_flags(argv):
  """absl's parser, but any bad flag or config is one line and exit 2."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    print(f"kd_jax: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:  # unknown --config.<field>
    print(f"kd_jax: error: unknown config field in overrides: {e}",
          file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # config file missing or unreadable
    print(f"kd_jax: error: cannot load config file: {_one_line(e)}",
          file=sys.stderr)
    sys.exit(2)
  if FLAGS["config"].value is None:
    print("kd_jax: error: --config=<configs/X.py[:arg]> is required",
          file=sys.stderr)
    sys.exit(2)
  try:
    FLAGS.config.to_dict()  # a config file that failed to load raises here
  except OSError as e:
    print(f"kd_jax: error: cannot load config file "
          f"{config_flags.get_config_filename(FLAGS['config'])!r}: "
          f"{_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  return rest


if __name__ == "__main__":
  cpu_runtime.configure()  # before JAX starts a backend
  app.run(main, flags_parser=parse_flags)
