"""Starting a training run from pretrained weights (``config.init_from``): fine-tuning.

``resolve_config`` fills what the config leaves to the source (``model=''``: architecture and
overrides; ``train_image_size``/``eval_image_size`` = 0: the source's sizes;
``normalization='source'``: its mean/std; ``image_channels`` = 0: its channels;
``eval_preproc='source'``: its eval resize/crop). ``init_state`` then copies every parameter of
the source into the freshly initialised state, except the classifier when the class count
differs (or ``reinit_head=True``), which keeps its fresh initialisation; the optimizer state
and EMA start from the copied parameters. A workdir that already has checkpoints resumes from
them instead: ``init_from`` only decides step 0.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from nfnets_jax import pretrained
from nfnets_jax.errors import ConfigError, UserError
from nfnets_jax.models import stacking
from nfnets_jax.optim import agc

SOURCE = "source"  # config value meaning "take it from init_from"


def resolve_config(config) -> Tuple[ml_collections.ConfigDict, Optional[pretrained.Pretrained]]:
  """(config with the source's defaults filled in, the loaded source) or (config, None)."""
  init_from = config.get("init_from", None)
  if not init_from:
    if not config.get("model", None):
      raise ConfigError("config.model is empty: name a model (see nfnets_jax.models."
                        "list_models()) or set config.init_from to start from pretrained weights.")
    return config, None
  try:
    source = pretrained.load(init_from, config.get("init_arch", None) or None,
                             params=pretrained.params_choice(config.get("init_ema", None)))
  except UserError as e:
    raise ConfigError(f"config.init_from={init_from!r}: {e}") from None
  c = copy.deepcopy(config)
  with c.unlocked():
    if not c.get("model", None):
      c.model = source.name
      kwargs = dict(source.model_kwargs)
      kwargs.update(dict(c.get("model_kwargs", None) or {}))
      c.model_kwargs = ml_collections.ConfigDict(kwargs)
    elif c.model != source.name:
      raise ConfigError(
          f"config.model={c.model!r} but config.init_from={init_from!r} holds a "
          f"{source.name!r}: leave config.model empty to use the source's architecture.")
    if not c.get("train_image_size", 0):
      c.train_image_size = int(source.image_size)
    if not c.get("eval_image_size", 0):
      c.eval_image_size = int(source.eval_image_size)
    if c.get("eval_preproc", None) == SOURCE:
      c.eval_preproc = source.eval_preproc
      c.eval_crop_pct = float(source.crop_pct)
    if c.get("normalization", None) == SOURCE:
      c.normalization = "custom"
      c.normalization_mean = tuple(float(m) for m in source.mean)
      c.normalization_std = tuple(float(s) for s in source.std)
    if c.get("train_preproc", None) == "auto":  # small images: pad-crop; photos: inception
      c.train_preproc = "pad_crop" if int(c.train_image_size) <= 64 else "inception_crop"
    if not c.get("image_channels", 0):
      c.image_channels = int(source.channels)
  if int(c.image_channels) != int(source.channels):
    raise ConfigError(f"config.image_channels={c.image_channels} but {init_from!r} takes "
                      f"{source.channels}-channel images; leave image_channels at 0.")
  return c, source


def _flat(tree) -> Dict[Tuple[str, str], Any]:
  return {(module, name): value for module, values in tree.items()
          for name, value in values.items()}


def init_state(state: Dict[str, Any], source: pretrained.Pretrained, config, tx,
               log=print) -> Dict[str, Any]:
  """``state`` (freshly initialised for ``config``) with the source's parameters copied in.

  Compared and copied block by block (``stacking.unstack_blocks``), then put back into the
  state's layout (stacked blocks or not), whatever the source's layout."""
  layout = state["params"]
  params = stacking.unstack_blocks(layout)
  head = agc.find_classifier(params)
  num_classes = int(np.shape(params[head]["w"])[-1])
  reinit_head = bool(config.get("reinit_head", False)) or source.num_classes != num_classes
  ours, theirs = _flat(params), _flat(stacking.unstack_blocks(source.params))
  missing = sorted(k for k in ours if k not in theirs and not (reinit_head and k[0] == head))
  unexpected = sorted(k for k in theirs if k not in ours and not (reinit_head and k[0] == head))
  wrong = sorted(f"{m}/{n}: ours {np.shape(ours[(m, n)])} vs source "
                 f"{np.shape(theirs[(m, n)])}" for (m, n) in ours
                 if (m, n) in theirs and not (reinit_head and m == head)
                 and np.shape(ours[(m, n)]) != np.shape(theirs[(m, n)]))
  if missing or unexpected or wrong:
    def fmt(items):
      items = [i if isinstance(i, str) else "/".join(i) for i in items]
      return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
    raise ConfigError(
        f"config.init_from={source.source!r} ({source.name}) does not fit config.model="
        f"{config.model!r}: " + "; ".join(
            f"{what}: {fmt(items)}" for what, items in
            (("missing in the source", missing), ("only in the source", unexpected),
             ("shapes differ", wrong)) if items))
  new = {m: {n: (np.array(v) if (reinit_head and m == head)
                 else np.asarray(theirs[(m, n)], np.asarray(v).dtype).copy())
             for n, v in values.items()}
         for m, values in params.items()}
  new = stacking.match_layout(new, layout)
  out = dict(state)
  out["params"] = new
  if source.state and state.get("model_state"):
    out["model_state"] = jax.tree.map(lambda a, b: np.asarray(b, np.asarray(a).dtype),
                                      state["model_state"], source.state)
  out["opt_state"] = jax.tree.map(np.asarray, jax.device_get(tx.init(new)))
  if "ema_params" in state:
    out["ema_params"] = jax.tree.map(np.copy, new)
  kept = "re-initialised" if reinit_head else "loaded"
  origin = source.kind + (f", step {source.step}" if source.step is not None else "")
  origin += ", EMA" if source.ema else ""
  loaded = len(ours) - (len(params[head]) if reinit_head else 0)
  log(f"Initialised from {source.source} ({origin}): {loaded} tensors loaded, classifier "
      f"{head} {kept} ({source.num_classes} -> {num_classes} classes).")
  return out


def frozen_summary(params, freeze: str) -> str:
  """'N of M tensors frozen' for a freeze regex (shown when a run starts)."""
  if not freeze:
    return ""
  pattern = re.compile(freeze)
  paths = agc.param_paths(stacking.unstack_blocks(params))  # the names users write
  frozen = [p for p in paths if pattern.search(p)]
  if not frozen:
    raise ConfigError(f"config.optimizer.freeze={freeze!r} matches no parameter path (paths look "
                      f"like {paths[0]!r}).")
  return f"{len(frozen)} of {len(paths)} parameter tensors frozen by {freeze!r}"

