"""kd_jax/console.py: the commands print no native-library log lines."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from kd_jax import console
from tests import helpers

QUIET = sorted(console.QUIET_ENV)


def _env(**env):
  """This environment without the variables that console.py sets (the test
  process's own `import jax` gave TF_CPP_MIN_LOG_LEVEL a value), plus env."""
  environ = {k: v for k, v in os.environ.items() if k not in QUIET}
  environ.update(JAX_PLATFORMS="cpu", PYTHONPATH=helpers.REPO, **env)
  return environ


def test_the_users_settings_are_kept():
  env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  console.quiet_native_logs(env)
  assert env == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
  env = {"TF_CPP_MIN_LOG_LEVEL": "1"}  # `import jax`'s default, not the user's
  console.quiet_native_logs(env, user_set=frozenset())
  assert env == console.QUIET_ENV


# A command that fails at once (a missing config file), then reports the
# variables as they were when it exited.
_REPORT = textwrap.dedent("""
    import atexit, os, runpy, sys
    atexit.register(lambda: print(*[os.environ.get(k) for k in {names!r}]))
    sys.argv = {argv!r}
    runpy.run_module({module!r}, run_name="__main__")
""")


@pytest.mark.parametrize("module, args", [
    ("kd_jax.main", ["--config=configs/no_such_config.py"]),
    ("kd_jax.study", ["count", "configs/no_such_study.py"]),
])
@pytest.mark.parametrize("user, expected", [
    ({}, ["2", "0"]),
    ({"TF_CPP_MIN_LOG_LEVEL": "0"}, ["0", "0"]),
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, ["2", "1"]),
])
def test_commands_quiet_the_logs_unless_the_user_set_the_variables(
    module, args, user, expected):
  code = _REPORT.format(names=QUIET, argv=[module, *args], module=module)
  out = subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO,
                       env=_env(**user), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr  # the missing file, in one line
  names = dict(zip(QUIET, out.stdout.split()))
  assert [names["TF_CPP_MIN_LOG_LEVEL"], names["TF_ENABLE_ONEDNN_OPTS"]] == expected


# What TensorFlow's and XLA's C++ logging print: a source file and line in
# brackets ("port.cc:153]"), and absl's note before its first line.
NATIVE = re.compile(r"\.(cc|h|cpp):\d+\]|absl::InitializeLog|oneDNN custom "
                    r"operations|Unable to register|cpu_feature_guard")


def test_a_tiny_cli_run_prints_no_native_log_lines(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "kd_jax.main",
       "--config=configs/quickstart.py:runlocal,scratch_baseline=false,"
       "num_epochs=1,teacher.num_epochs=1", f"--workdir={tmp_path}"],
      cwd=helpers.REPO, env=_env(), capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr
  lines = (out.stdout + out.stderr).splitlines()
  assert [l for l in lines if NATIVE.search(l)] == []
  assert any("val acc" in l for l in lines)  # the run's own lines are there
