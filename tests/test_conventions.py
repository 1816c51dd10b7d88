"""The contributing conventions of README.md, checked on the source."""
import ast
import os
import re

from kd_jax import config_lib
from kd_jax.distill import methods
from kd_jax.train import step
from kd_jax.train import sweep

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "kd_jax")
MAX_LINES = 60
# The top-level pipeline and the stage loop read best as one piece.
LONG_ALLOWED = set()  # no exemption: the pipeline and the epoch loop too


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


def _names_method(node) -> bool:
  """`method`, `x.method`, `x["method"]`: an expression that holds a method
  name."""
  if isinstance(node, ast.Name):
    return "method" in node.id
  if isinstance(node, ast.Attribute):
    return "method" in node.attr
  if isinstance(node, ast.Subscript):
    key = node.slice
    return isinstance(key, ast.Constant) and "method" in str(key.value)
  return False


def _method_literals(node) -> set:
  values = node.elts if isinstance(node, (ast.Set, ast.Tuple, ast.List)) else [node]
  return {v.value for v in values if isinstance(v, ast.Constant)
          and v.value in methods.METHODS}


def test_method_names_live_only_in_the_registry():
  """No module but the registry compares a method name with a literal, holds
  a set of method names, or passes one as `method=`."""
  hits = []
  for rel, text in _sources():
    if rel == os.path.join("distill", "methods.py"):
      continue
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if (any(_names_method(s) for s in sides)
            and any(_method_literals(s) for s in sides)):
          hits.append(f"{rel}:{node.lineno}")
      elif isinstance(node, (ast.Set, ast.Tuple, ast.List)):
        if len(_method_literals(node)) >= 2:
          hits.append(f"{rel}:{node.lineno}")
      elif isinstance(node, ast.keyword) and node.arg == "method":
        if _method_literals(node.value):
          hits.append(f"{rel}:{node.value.lineno}")
  assert not hits, hits


def test_step_module_does_no_io():
  text = open(os.path.join(PACKAGE, "train", "step.py")).read()
  for word in ("open(", "print(", "os.", "reporting", "checkpointing",
               "ConfigDict"):
    assert word not in text, word


def test_every_method_field_is_a_config_field_and_in_kd_spec():
  config = config_lib.base_config()
  spec = methods.KDSpec()
  for name, field in methods.OWN_FIELDS.items():
    assert config.kd[name] == field.default, name
    assert getattr(spec, name) == field.default, name
  for name in methods.SWEEP_FIELDS:
    assert "kd." + name in sweep.VMAP_FIELDS


def test_a_method_names_its_fields_hyperparams_and_report_columns():
  c = config_lib.base_config()
  c.kd.method = "dkd"
  hp = step.hyperparams(config_lib.read_specs(c))
  assert set(hp["kd"]) == {"dkd_alpha", "dkd_beta"}
  assert methods.report_columns(c.kd) == {
      "temperature": "fixed", "alpha": False, "schedule": False}
  c.kd.method = "ctkd"
  assert "kd" not in step.hyperparams(config_lib.read_specs(c))
  assert methods.report_columns(c.kd) == {
      "temperature": "learned", "alpha": True, "schedule": True}


# Imported inside functions on purpose: optional dependencies (torch, the
# TFLite runtime), TensorFlow and the packages built on it (start-up time:
# seconds, and native log lines before a command can quiet them), PyAV's
# FFmpeg, matplotlib and scikit-learn (start-up time, used by one path each).
LATE_IMPORTS_ALLOWED = ("torch", "tensorflow", "tensorflow_datasets",
                        "ai_edge_litert", "clu", "av", "matplotlib", "sklearn",
                        "jax.experimental.jax2tf")


def test_no_import_inside_a_function_but_optional_or_heavy_packages():
  found = []
  for rel, text in _sources():
    for node in ast.walk(ast.parse(text)):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
          names = [a.name for a in sub.names]
        elif isinstance(sub, ast.ImportFrom):
          names = [f"{sub.module}.{a.name}" for a in sub.names]
        else:
          continue
        for name in names:
          if not any(name == p or name.startswith(p + ".")
                     for p in LATE_IMPORTS_ALLOWED):
            found.append(f"{rel}:{sub.lineno} {name}")
  assert not found, found
