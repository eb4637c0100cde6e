"""Multiply-accumulate counter for one image's forward pass, without running any convolution.

The model is traced abstractly (``jax.eval_shape``) with Haiku method interception on every
convolution (``WSConv2D``, any ``hk.ConvND``, ``hk.DepthwiseConv2D``) and ``hk.Linear``; each
call adds ``output elements x (kernel area x input channels / groups)`` (convs) or
``batch x in x out`` (linears). This is the convention of DeepMind's NFNet README, whose
"FLOPs" are MACs of convolutions and linear layers, squeeze-excite linears included;
activations, pooling, normalization, weight standardization and biases are not counted.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import layers
from nfnets_jax import models


def _conv_macs(module, x, out) -> int:
  """MACs of one convolution call given its input and output (shapes only)."""
  if isinstance(module, hk.DepthwiseConv2D):
    kernel = np.prod(module.kernel_shape)
    return int(np.prod(out.shape) * kernel)
  groups = getattr(module, "feature_group_count", 1)
  kernel = np.prod(module.kernel_shape)
  channel_axis = getattr(module, "channel_index", -1)
  in_ch = x.shape[channel_axis]
  return int(np.prod(out.shape) * kernel * in_ch // groups)


def _count_interceptor(counter: dict, include: Callable[[hk.Module], bool]):
  def interceptor(next_f, args, kwargs, context):
    out = next_f(*args, **kwargs)
    if context.method_name != "__call__" or not include(context.module):
      return out
    module = context.module
    x = args[0] if args else kwargs.get("inputs", kwargs.get("x"))
    if isinstance(module, (layers.WSConv2D, hk.ConvND, hk.DepthwiseConv2D)):
      counter["macs"] += _conv_macs(module, x, out)
    elif isinstance(module, hk.Linear):
      counter["macs"] += int(np.prod(out.shape) * x.shape[-1])
    return out
  return interceptor


def _accepts(constructor, arg: str) -> bool:
  try:
    return arg in inspect.signature(constructor).parameters
  except (TypeError, ValueError):
    return False


def count_macs(model_name_or_fn: Union[str, Callable], image_size, num_classes: int = 1000,
               include: Callable[[hk.Module], bool] = lambda m: True,
               **overrides) -> int:
  """Multiply-accumulates of a forward pass on one ``image_size`` RGB image (eval mode).

  ``model_name_or_fn`` is a registered model name (``overrides`` go to its constructor, traced
  through ``models.transform``) or a function ``fn(images) -> outputs`` that builds and applies
  a Haiku model (it runs inside ``hk.transform_with_state``). ``image_size`` is an int or
  ``(height, width)``. ``include(module)`` may exclude modules (e.g. squeeze-excite) from the
  count.
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if isinstance(model_name_or_fn, str):
    info = models.get_info(model_name_or_fn)
    if "grouped_conv_impl" not in overrides and _accepts(info.constructor, "grouped_conv_impl"):
      overrides["grouped_conv_impl"] = "native"  # Faster to trace; MACs are the same.
    init = functools.partial(
        models.transform(model_name_or_fn, num_classes, **overrides).init, is_training=False)
  else:
    if overrides:
      raise ValueError("overrides only apply to registered model names; bind them in fn.")
    init = hk.transform_with_state(model_name_or_fn).init

  counter = {"macs": 0}
  images = jax.ShapeDtypeStruct((1,) + tuple(image_size) + (3,), jnp.float32)
  # The interceptor stack is thread-local: it sees every module call of the trace below.
  with hk.intercept_methods(_count_interceptor(counter, include)):
    jax.eval_shape(init, jax.random.PRNGKey(0), images)
  return counter["macs"]


def count_flops(model_name_or_fn, image_size, num_classes: int = 1000, **kwargs) -> int:
  """FLOPs counted as two per multiply-accumulate."""
  return 2 * count_macs(model_name_or_fn, image_size, num_classes, **kwargs)
