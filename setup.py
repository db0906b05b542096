"""Packaging for mgd: Matching Guided Distillation for PyTorch."""
from setuptools import find_packages, setup

setup(
    name="mgd",
    version="0.1.0",
    description="Matching Guided Distillation (ECCV 2020) for any PyTorch model pair",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["mgd", "mgd.*"]),
    install_requires=[
        # The only torch/torchvision pair known to import together on the reference machines;
        # any matching pair works, these are the tested ones.
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "scipy",
        "ortools>=9.4",  # ortools.graph.python.linear_sum_assignment appeared in 9.4
        "pyyaml",  # --config recipes (mgd.engine.config)
    ],
    extras_require={"test": ["pytest", "pytest-timeout"], "timm": ["timm>=1.0"],
                    "sweep": ["optuna>=4.0", "matplotlib", "tqdm"],  # python -m mgd.sweep
                    "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings-python>=1.10", "latex2mathml>=3.77"]},  # make docs
    entry_points={"console_scripts": ["mgd-sweep=mgd.tools.sweep:main"]},
)
