"""Optimisation: Adaptive Gradient Clipping (``agc``) and the NFNet recipe (``recipe``).

Imports nothing of the package: ``agc`` is a plain optax transform, ``recipe`` builds the
optimizer, schedule, weight-decay mask and EMA from a config (gradient accumulation and
non-finite skipping belong to the engine). The recipe's public names are re-exported here, so
``optim.build_optimizer(...)`` reads as before.
"""
from nfnets_jax.optim import agc
from nfnets_jax.optim.recipe import (KNOWN_OPTIMIZERS, KNOWN_SCHEDULES, NO_DECAY_NAMES,
                                     agc_clip_kwargs, build_optimizer, default_optimizer_config,
                                     ema_decay_at, ema_update, get_learning_rate,
                                     learning_rate_schedule, peak_learning_rate, resolve_config,
                                     scale_by_path, update_multipliers, uses_agc,
                                     weight_decay_mask)

__all__ = [
    "agc", "KNOWN_OPTIMIZERS", "KNOWN_SCHEDULES", "NO_DECAY_NAMES", "agc_clip_kwargs",
    "build_optimizer", "default_optimizer_config", "ema_decay_at", "ema_update",
    "get_learning_rate", "learning_rate_schedule", "peak_learning_rate", "resolve_config",
    "scale_by_path", "update_multipliers", "uses_agc", "weight_decay_mask",
]
