"""nfnets_jax: Normalizer-Free networks and Adaptive Gradient Clipping in JAX/Haiku."""
from setuptools import find_packages, setup

setup(
    name="nfnets_jax",
    version="0.1.0",
    description="Normalizer-Free networks (NF-ResNet, NF-RegNet, NFNet F0-F7) and AGC in JAX/Haiku",
    packages=find_packages(include=["nfnets_jax", "nfnets_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Tested: JAX 0.10.2 on CPU (CI: `make test`, 8 simulated devices, 2 processes).
        # scripts/gpu_check.sh is written for a CUDA machine with JAX 0.11 and runs from the
        # source tree without installing; no GPU was available to run it yet (docs/benchmarks.md).
        "jax>=0.10.0,<0.11",
        "jaxlib>=0.10.0,<0.11",
        "dm-haiku>=0.0.17",
        "optax>=0.2.8",
        "chex>=0.1.90",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tensorflow-cpu>=2.18",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=6.0",
        "orbax-checkpoint>=0.11",
        "tensorboard>=2.18",
        "matplotlib>=3.8",
        "safetensors>=0.4",  # timm's hub weights, read/written with safetensors' numpy API
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "dill>=0.3.8"],
        # `make finetune`: scikit-learn ships the real handwritten digits of the demo.
        "demo": ["scikit-learn>=1.3"],
        # Real timm for tests/weights/test_timm.py: install with scripts/install_timm_extra.sh,
        # which also takes the CPU torch wheel and patches torchvision so that timm imports.
        "timm": ["torch==2.13.0", "torchvision==0.28.0", "timm>=1.0", "safetensors>=0.4"],
    },
)
