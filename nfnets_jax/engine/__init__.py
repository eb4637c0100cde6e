"""The training engine: ``train_and_evaluate``, step functions, pmap, checkpoints, evaluation.

Modules, lowest first: ``parallel`` (the only module that knows devices and ``pmap``),
``steps`` (forward, loss, update, eval logits), ``checkpoint`` (orbax: asynchronous saves,
restore past corrupt checkpoints), ``reporting`` (console, metrics.jsonl, TensorBoard),
``validation`` (config checks before compiling), ``evaluation`` (exact-once eval, any
checkpoint on any test set), ``imagenet_real`` and ``train``. Uses models, optim, data and
``pretrained``; never imported by them.
"""
from nfnets_jax.engine.evaluation import evaluate_checkpoint
from nfnets_jax.engine.train import train_and_evaluate

__all__ = ["evaluate_checkpoint", "train_and_evaluate"]
