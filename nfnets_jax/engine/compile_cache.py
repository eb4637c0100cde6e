"""JAX's persistent compilation cache, on by default for training launches.

Every launch, resume after a preemption and sweep point compiles the same train step again;
with the cache, a second launch reads the compiled executables from disk (time to first step:
docs/benchmarks.md "Time to first step"). ``config.compilation_cache_dir``:

- ``'auto'`` (the default): JAX's own ``JAX_COMPILATION_CACHE_DIR`` environment variable when set,
  else ``$XDG_CACHE_HOME/nfnets_jax/jax_compilation_cache`` (``~/.cache/...``);
- a path: that directory;
- ``''``: off (as for benchmarks that time compilation).

Entries are keyed by JAX on the program, devices, flags and versions, so a stale entry is never
used; the directory can be deleted at any time. Programs that compile in under
``min_compile_time_secs`` are not written (JAX's own threshold, 1 s).
"""
from __future__ import annotations

import os
from typing import Optional

import jax

AUTO = "auto"
ENV_VAR = "JAX_COMPILATION_CACHE_DIR"  # read by JAX itself when it starts


def default_dir() -> str:
  """``$XDG_CACHE_HOME/nfnets_jax/jax_compilation_cache`` (``~/.cache`` without XDG)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "nfnets_jax", "jax_compilation_cache")


def resolve(setting: Optional[str]) -> str:
  """The directory ``setting`` means ('' = off); see the module docstring."""
  setting = AUTO if setting is None else str(setting)
  if setting != AUTO:
    return os.path.expanduser(setting)
  return os.environ.get(ENV_VAR) or default_dir()


def enable(setting: Optional[str] = AUTO, min_compile_time_secs: float = 1.0) -> str:
  """Turns the persistent cache on in ``resolve(setting)`` (or off for ''); returns the
  directory ('' when off). Call before anything compiles."""
  directory = resolve(setting)
  if not directory:
    disable()
    return ""
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  return directory


def disable() -> None:
  """No persistent cache for this process (timings of compilation stay honest)."""
  jax.config.update("jax_enable_compilation_cache", False)


def current_dir() -> str:
  """The directory JAX caches compilations in now ('' when off)."""
  if not jax.config.jax_enable_compilation_cache:
    return ""
  return jax.config.jax_compilation_cache_dir or ""
