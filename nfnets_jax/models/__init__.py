"""The Normalizer-Free model family and a name registry (``create``)."""
from nfnets_jax.models.registry import ModelInfo, create, get_info, list_models, register

# Each family module registers its names on import. Keep these imports after the registry.
from nfnets_jax.models import nfnet  # noqa: F401,E402
from nfnets_jax.models.nfnet import NFNet  # noqa: E402

__all__ = ["ModelInfo", "create", "get_info", "list_models", "register", "NFNet"]
