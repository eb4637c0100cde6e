"""The persistent compilation cache: where it goes, how it is turned off, that it writes."""
import os

import jax
import jax.numpy as jnp
import pytest

from nfnets_jax.engine import compile_cache

_OPTIONS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def restore_jax_config():
  saved = {k: getattr(jax.config, k) for k in _OPTIONS}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


def test_resolve_auto_env_path_and_off(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve("auto") == str(tmp_path / "xdg" / "nfnets_jax" /
                                              "jax_compilation_cache")
  assert compile_cache.resolve(None) == compile_cache.resolve("auto")
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "from_env"))
  assert compile_cache.resolve("auto") == str(tmp_path / "from_env")  # JAX's own variable wins
  assert compile_cache.resolve(str(tmp_path / "mine")) == str(tmp_path / "mine")
  assert compile_cache.resolve("") == ""


def test_enable_writes_entries_and_empty_turns_it_off(tmp_path, restore_jax_config):
  directory = compile_cache.enable(str(tmp_path / "cache"), min_compile_time_secs=0.0)
  assert directory == str(tmp_path / "cache") == compile_cache.current_dir()
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
  assert os.listdir(directory)  # the compiled program was written
  assert compile_cache.enable("") == ""
  assert compile_cache.current_dir() == ""
