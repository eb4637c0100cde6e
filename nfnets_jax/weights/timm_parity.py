"""Checking our models against real timm: perturbed weights and timm's logits on NHWC input.

Used by the interop tests and ``scripts/check_timm_parity.py``. It imports torch only inside
its functions, which only those callers (with the optional ``timm`` extra installed) call.
"""
from __future__ import annotations

import numpy as np


def perturb_(model, seed: int = 1):
  """Gives every tensor of a timm model a non-trivial value, in place, and returns the model:
  gains ~ 1 +- 0.3, skip gains ~ 0.5 +- 0.2 (timm initialises them to zero, which would hide a
  wrong mapping of the residual branches), biases ~ 0.1, weights shifted to a non-zero mean
  (so the standardization's centring matters)."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith("skipinit_gain"):
        p.copy_(0.5 + 0.2 * r)
      elif name.endswith(".gain"):
        p.copy_(1.0 + 0.3 * r)
      elif name.endswith("bias"):
        p.copy_(0.1 * r)
      else:
        p.add_(p.std() * (0.3 * r + 0.1))
  return model


def numpy_state(model) -> dict:
  """A timm model's state dict as numpy arrays (copies)."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def timm_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
  """timm's logits (eval mode as the model is set) for NHWC float32 images."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def max_normalised_error(ours: np.ndarray, reference: np.ndarray) -> float:
  """max|ours - reference| / max|reference|: robust to logits near zero."""
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))
