"""Packaging for gqa-costlaw: one distribution, three packages (costlaw, kernels, experiments)."""

from setuptools import setup

setup(
    name="gqa-costlaw",
    version="0.1.0",
    description="JAX experiment suite for cost-optimal grouped-query attention design",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["costlaw", "kernels", "experiments", "configs"],
    # Lower bounds are the versions this suite was built and tested with.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "tensorboard>=2.21.0",
        "tensorboardX>=2.6.5",
        "chex>=0.1.92",
        "numpy>=2.0",
        "scipy>=1.14",
        "matplotlib>=3.9",
        "threadpoolctl>=3.8",
        "tokenizers>=0.23.3",  # BPE trained locally, or any tokenizer.json  # one BLAS thread inside the scaling fits (costlaw.fit)
        "absl-py>=2.1",
        "flatbuffers>=25.12.19",  # jax.export serialization (kernel lowering proofs)
    ],
    extras_require={"test": ["pytest>=8.0", "pytest-xdist>=3.5"]},
    entry_points={
        "console_scripts": [
            "costlaw=costlaw.cli:main",
            "gqa-train=experiments.train:run",
            "gqa-profile=experiments.profile:run",
            "gqa-data=experiments.data:main",
        ]
    },
)
