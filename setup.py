"""Installs est_megatron: Evolving Subnetwork Training on DeepSpeed."""
from setuptools import find_packages, setup

setup(
    name="est_megatron",
    version="0.1.0",
    description="Evolving Subnetwork Training (EST), RAPTR and SAT for Llama/GPT-2 pretraining on DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["est_megatron", "est_megatron.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.5",
        "deepspeed>=0.14",
        "sentencepiece>=0.1.99",
        "datasets>=2.14",
        "numpy>=1.24",
        "zstandard>=0.21",
        "pyarrow>=12",
        "tqdm>=4.64",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.40", "safetensors>=0.4", "matplotlib>=3.7"],
        "gpu": ["flash-attn>=2.5"],
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
        "plot": ["matplotlib>=3.7"],  # tools/compare_runs.py and tools/plot_metrics.py figures
    },
)
