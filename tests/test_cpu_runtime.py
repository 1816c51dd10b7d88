"""kd_jax/cpu_runtime.py: XLA:CPU flags and host-memory reuse."""
import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from kd_jax import cpu_runtime


def test_cpu_xla_flags_are_added_but_never_override_the_users():
  env = {}
  cpu_runtime.add_cpu_xla_flags(env)
  assert env["XLA_FLAGS"].split() == list(cpu_runtime.CPU_XLA_FLAGS)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                      "--xla_cpu_experimental_ynn_fusion_type=conv"}
  cpu_runtime.add_cpu_xla_flags(env)
  assert env["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=2",
      "--xla_cpu_experimental_ynn_fusion_type=conv"]


@pytest.mark.parametrize("environ, platform, why", [
    ({}, "linux", None),
    ({"KD_JAX_CPU_MEMORY": "reuse"}, "linux", None),
    ({"KD_JAX_CPU_MEMORY": "system"}, "linux", "KD_JAX_CPU_MEMORY=system"),
    ({}, "darwin", "not Linux (darwin)"),
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_MAX_": "9"}, "linux",
     "set by the user: MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux",
     "set by the user: GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=on"}, "linux", None),
    ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"}, "linux",
     "set by the user: JAX_CPU_ENABLE_ASYNC_DISPATCH"),
])
def test_memory_reuse_leaves_the_users_settings_alone(environ, platform, why):
  assert cpu_runtime.memory_reuse_blocked(environ, platform) == why
  if why is not None:
    assert cpu_runtime.reuse_host_memory(environ, platform) is False


# A jitted function whose temporary buffer (the 16384 x 2048 float32 product,
# 128 MiB) is over glibc's 64 MiB per-thread heap: the case that page-faulted
# on every call.
_FAULTS = textwrap.dedent("""
    import json, resource
    from kd_jax import cpu_runtime
    reuse = cpu_runtime.configure()  # what kd_jax's commands call first
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x, w: (x @ w).sum())
    x, w = jnp.ones((16384, 8)), jnp.ones((8, 2048))
    temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    value = float(f(x, w))
    for _ in range(2):
      f(x, w).block_until_ready()
    faults = []
    for _ in range(12):
      r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x, w).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(json.dumps({"reuse": reuse, "temp": temp,
                      "faults": faults, "value": value}))
""")


def _python(code, **env):
  """Runs code in a fresh CPU-only Python without the caller's glibc malloc
  or host-memory settings (they would switch kd_jax's host-memory reuse
  off)."""
  environ = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in (
                 "GLIBC_TUNABLES", "KD_JAX_CPU_MEMORY",
                 "JAX_CPU_ENABLE_ASYNC_DISPATCH")}
  environ.update(JAX_PLATFORMS="cpu", **env)
  return subprocess.run([sys.executable, "-c", code], env=environ,
                        capture_output=True, text=True, timeout=300, check=True)


def _run_faults(**env):
  return json.loads(_python(_FAULTS, **env).stdout.strip().splitlines()[-1])


# What a process looks like after `prelude`, then after configure() (twice).
_STATE = textwrap.dedent("""
    import json, os, sys
    {prelude}
    import jax
    def state():
      return {{"env": dict(os.environ),
               "async": jax.config.read("jax_cpu_enable_async_dispatch")}}
    out = {{"imported": state()}}
    from kd_jax import cpu_runtime
    out["reuse"] = [cpu_runtime.configure(), cpu_runtime.configure()]
    out["configured"] = state()
    print(json.dumps(out))
""")


def _state(prelude):
  out = _python(_STATE.format(prelude=prelude),
                XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_kd_jax_leaves_the_process_alone_and_configure_sets_it_up():
  plain = _state("import flax, optax")["imported"]  # JAX's own defaults
  state = _state("import kd_jax, kd_jax.losses, kd_jax.models")
  imported, configured = state["imported"], state["configured"]
  assert plain["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
  assert imported == plain  # every variable and the dispatch option as JAX has them
  linux = sys.platform.startswith("linux")
  assert state["reuse"] == [linux, linux]  # a second call changes nothing
  assert configured["env"]["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=1", *cpu_runtime.CPU_XLA_FLAGS]
  assert configured["async"] is (not linux) and plain["async"] is True
  del configured["env"]["XLA_FLAGS"], plain["env"]["XLA_FLAGS"]
  assert configured["env"] == plain["env"]


def test_a_bad_opt_out_value_is_named_in_one_line_and_changes_nothing():
  with pytest.raises(ValueError, match=r"KD_JAX_CPU_MEMORY='off' is not "
                     r"allowed; allowed: 'reuse' \(the default\) or 'system'"):
    cpu_runtime.memory_reuse_blocked({"KD_JAX_CPU_MEMORY": "off"}, "linux")
  out = _python("from kd_jax import cpu_runtime; "
                "print(cpu_runtime.configure(), cpu_runtime.configure())",
                KD_JAX_CPU_MEMORY="off")
  assert out.stdout.strip() == "False False"
  assert out.stderr.strip().splitlines() == [
      "kd_jax: KD_JAX_CPU_MEMORY='off' is not allowed; allowed: 'reuse' "
      "(the default) or 'system'; host memory left to the system"]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc host-memory reuse is Linux-only")
def test_steps_after_the_first_fault_in_no_pages_unless_opted_out():
  pages = resource.getpagesize()
  reused = _run_faults()
  system = _run_faults(KD_JAX_CPU_MEMORY="system")
  assert reused["reuse"] is True and system["reuse"] is False
  assert reused["temp"] == system["temp"] >= 16384 * 2048 * 4
  assert reused["value"] == system["value"] == 16384 * 2048 * 8
  temp_pages = reused["temp"] // pages
  # glibc's fresh mmap: every page of the temporary buffer faulted in again.
  assert min(system["faults"]) >= 0.9 * temp_pages, system
  # Reused heap: (almost) nothing new. On a loaded machine the heap can
  # still grow a few times before it settles (seen: twice in the first 5
  # calls, a buffer faulted in each time), then it stays: the median call
  # faults in nothing (without the reuse, 12 of 12 calls fault it all in).
  full = [f for f in reused["faults"] if f > 0.5 * temp_pages]
  assert sorted(reused["faults"])[6] < 0.02 * temp_pages, reused
  assert len(full) <= 3, reused
