"""The Normalizer-Free model family and a name registry (``create``).

Each family module registers its names with :func:`register` when imported below. The model
classes are public: ``from nfnets_jax.models import NFNet, NFResNet, NFRegNet, ResNet, NFNetL``
(each a Haiku module called as ``model(images, is_training)`` inside ``hk.transform``);
``create(name, num_classes, **overrides)`` builds any registered name, ``list_models()`` lists
them and ``get_info(name)`` gives the name's record (``ModelInfo``: sizes, defaults, eval recipe,
published weights; see ``registry``). ``stack_blocks`` / ``unstack_blocks`` / ``match_layout``
(``stacking``) convert between the stacked in-memory layout of NFNet blocks and the per-block
names of every file. Imports only ``layers``.
"""
from nfnets_jax.models.registry import (EvalRecipe, ModelInfo, Weights, constructor_kwargs,
                                        create, get_info,
                                        list_models, published_weights, register,
                                        resize_crop_32, timm_recipe, transform)
from nfnets_jax.models.stacking import match_layout, stack_blocks, unstack_blocks

# Family modules (import order = registration order). Keep these after the registry import.
from nfnets_jax.models import nfnet  # noqa: F401,E402  NFNet F0-F7, F0+-F7+
from nfnets_jax.models import nf_resnet  # noqa: F401,E402  NF-ResNet 26..600
from nfnets_jax.models import nf_regnet  # noqa: F401,E402  NF-RegNet B0-B8
from nfnets_jax.models import resnet  # noqa: F401,E402  pre-activation BatchNorm ResNet baseline
from nfnets_jax.models import nfnet_l  # noqa: F401,E402  timm's NFNet-L0 / ECA-NFNet-L0..L3
from nfnets_jax.models import demo  # noqa: F401,E402  small NF model for the Fashion-MNIST demo

from nfnets_jax.models.demo import NFDemo  # noqa: E402
from nfnets_jax.models.nf_regnet import NFRegNet  # noqa: E402
from nfnets_jax.models.nf_resnet import NFResNet  # noqa: E402
from nfnets_jax.models.nfnet import NFNet  # noqa: E402
from nfnets_jax.models.nfnet_l import NFNetL  # noqa: E402
from nfnets_jax.models.resnet import ResNet  # noqa: E402

__all__ = ["EvalRecipe", "ModelInfo", "constructor_kwargs", "Weights", "published_weights", "resize_crop_32",
           "timm_recipe", "NFDemo", "NFNet", "NFNetL", "NFRegNet", "NFResNet", "ResNet", "create",
           "get_info", "list_models", "match_layout", "register", "stack_blocks", "transform",
           "unstack_blocks"]
from nfnets_jax.models import timm_variants  # noqa: F401,E402  timm's nf_resnet50 / nf_regnet_b1 / test_nfnet
