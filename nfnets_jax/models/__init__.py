"""The Normalizer-Free model family and a name registry (``create``).

Each family module registers its names with :func:`register` when imported below.
"""
from nfnets_jax.models.registry import ModelInfo, create, get_info, list_models, register

# Family modules (import order = registration order). Keep these after the registry import.
from nfnets_jax.models import nfnet  # noqa: F401,E402  NFNet F0-F7, F0+-F7+
from nfnets_jax.models import nf_resnet  # noqa: F401,E402  NF-ResNet 26..600
from nfnets_jax.models import nf_regnet  # noqa: F401,E402  NF-RegNet B0-B8
from nfnets_jax.models import resnet  # noqa: F401,E402  pre-activation BatchNorm ResNet baseline
from nfnets_jax.models import nfnet_l  # noqa: F401,E402  timm's NFNet-L0 / ECA-NFNet-L0..L3
from nfnets_jax.models import demo  # noqa: F401,E402  small NF model for the Fashion-MNIST demo

__all__ = ["ModelInfo", "create", "get_info", "list_models", "register"]
