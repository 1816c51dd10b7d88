"""What kd_jax's commands print: their own lines, not native libraries' logs.

kd_jax uses TensorFlow only for input pipelines and summary writers, yet
importing it prints C++ log lines on stderr: "oneDNN custom operations are
on ..." (once per TensorFlow library that checks it, each preceded by "All
log messages before absl::InitializeLog() is called are written to STDERR")
and other INFO and WARNING lines of TensorFlow's and XLA's C++ logging.
`quiet_native_logs()` sets, unless the user set them:

  TF_CPP_MIN_LOG_LEVEL=2   TensorFlow's and jaxlib's C++ logs keep their
                           ERROR lines only (JAX's own default is 1: INFO
                           lines hidden, WARNING lines shown).
  TF_ENABLE_ONEDNN_OPTS=0  TensorFlow's oneDNN custom ops off. They serve
                           TensorFlow's matrix and convolution kernels,
                           which kd_jax never runs in TensorFlow (its models
                           run in JAX; jaxlib does not read this variable),
                           and TensorFlow announces them whatever the log
                           level.

Each command calls it first, before anything imports TensorFlow or JAX (both
read these variables once). Importing kd_jax changes nothing; it does import
this module, which notes which of the variables the user set before `import
jax` gives TF_CPP_MIN_LOG_LEVEL its default.
"""
import os

# Variable -> the value a kd_jax command gives it unless the user set it.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}

# The user's settings: this module is imported with the kd_jax package,
# before any of its modules imports JAX.
USER_SET = frozenset(name for name in QUIET_ENV if name in os.environ)


def quiet_native_logs(environ=os.environ, user_set=None):
  """Gives QUIET_ENV's variables their quiet values, except those in
  `user_set` (default: USER_SET for os.environ, else those in `environ`)."""
  if user_set is None:
    user_set = USER_SET if environ is os.environ else frozenset(environ)
  for name, value in QUIET_ENV.items():
    if name not in user_set:
      environ[name] = value
