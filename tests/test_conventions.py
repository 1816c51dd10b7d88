"""The contributing conventions of README.md, checked on the source."""
import ast
import os
import re

from kd_jax.distill import losses
from kd_jax.distill import methods

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "kd_jax")
MAX_LINES = 60
# The top-level pipeline and the stage loop read best as one piece.
LONG_ALLOWED = {("pipeline.py", "train_and_evaluate"), ("stage.py", "_train")}


def _sources():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path) as f:
          yield os.path.relpath(path, PACKAGE), f.read()


def test_no_function_over_60_lines():
  long = []
  for rel, text in _sources():
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_LINES and (os.path.basename(rel), node.name) not in LONG_ALLOWED:
          long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
  assert not long, "functions over 60 lines: " + "; ".join(long)


def test_no_module_calls_another_modules_private_names():
  """`module._name` across kd_jax modules (a module's own `_name` is fine)."""
  found = []
  for rel, text in _sources():
    for m in re.finditer(r"\b([a-z_]+)\._[a-z]\w*", text):
      if m.group(1) not in ("self", "cls", "os", "sys", "jax", "np", "jnp"):
        found.append(f"{rel}: {m.group(0)}")
  assert not found, found


def test_method_names_are_compared_only_in_the_registry():
  pattern = re.compile(r"method (==|!=|in|not in) ")
  hits = [f"{rel}: {line.strip()}"
          for rel, text in _sources()
          if rel in ("train/step.py", "train/stage.py", "train/pipeline.py", "train/sweep.py")
          for line in text.splitlines() if pattern.search(line)]
  assert not hits, hits


def test_step_module_does_no_io():
  text = open(os.path.join(PACKAGE, "train", "step.py")).read()
  for word in ("open(", "print(", "os.", "reporting", "checkpointing",
               "ConfigDict"):
    assert word not in text, word


def test_registry_lists_the_losses_methods():
  assert methods.USER_METHODS == losses.METHODS
  assert methods.TEACHER_METHODS == losses.TEACHER_METHODS
