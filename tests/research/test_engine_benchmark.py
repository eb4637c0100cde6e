"""``research/engine_benchmark.py``: compiled per-device memory of the engine's own train step,
and the bfloat16 peaks that MFU divides by."""
import types

import jax
import numpy as np
import pytest

from nfnets_jax.engine import parallel
from nfnets_jax.research import engine_benchmark as eb


def test_fsdp8_holds_an_eighth_of_the_sharded_state_per_device(monkeypatch):
  monkeypatch.setattr(parallel, "MIN_SHARDED_SIZE", 1)  # every divisible array sharded
  tiny = dict(model="nf_demo_tiny", image_size=28, num_classes=16, precision="float32",
              per_device_batch=2, parallel="mesh")
  replicated = eb.memory(eb.EngineCase(fsdp=1, **tiny))
  sharded = eb.memory(eb.EngineCase(fsdp=8, **tiny))
  # Arguments = state + this device's share of the batch (2 images of 28x28x3 and labels).
  batch_bytes = 2 * (28 * 28 * 3 + 16) * 4
  state = replicated["state_bytes_total"]
  assert replicated["argument_size_in_bytes"] == state + batch_bytes
  # Sharded: 1/8 of each array with a dimension divisible by 8, the rest (e.g. [3, 3, 1, 8]
  # has one; a [2] key has none) whole.
  built = eb.BuiltStep(eb.EngineCase(fsdp=8, **tiny))
  expected = sum(
      np.prod(s.shape) * s.dtype.itemsize // (8 if parallel.fsdp_spec(s.shape, 8) else 1)
      for s in jax.tree.leaves(built.state_shapes))
  assert sharded["argument_size_in_bytes"] == expected + batch_bytes
  assert sharded["argument_size_in_bytes"] - batch_bytes < 0.2 * state
  table = eb.memory_table([replicated, sharded])
  assert "mesh fsdp=8" in table and "| 1.000 |" in table


@pytest.mark.parametrize("kind, tflops", [("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                          ("NVIDIA A100-SXM4-80GB", 312.0), ("TPU v4", 275.0),
                                          ("cpu", None)])
def test_peak_by_device_name(kind, tflops):
  peak = eb.peak_bf16_flops(types.SimpleNamespace(device_kind=kind))
  assert peak == (tflops * 1e12 if tflops else None)
