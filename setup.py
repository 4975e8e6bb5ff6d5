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
    # Ranges are the ones CI tests: torch and DeepSpeed at the tested minor versions; .ci/run also runs the
    # Hugging Face tests against the oldest transformers allowed here.
    install_requires=[
        "torch>=2.13,<2.14",
        "deepspeed>=0.19,<0.20",
        "sentencepiece>=0.2,<0.3",
        "protobuf>=4",  # sentencepiece's model proto, read when exporting a tokenizer.json
        "tokenizers>=0.22,<0.24",
        "datasets>=2.14",
        "numpy>=1.24",
        "zstandard>=0.21",
        "pyarrow>=12",
        "tqdm>=4.64",
        "psutil>=5.9",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "huggingface_hub>=0.24",  # save_torch_state_dict: sharded safetensors with an index (est_megatron.hf)
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=5.0,<6", "megatron-core>=0.14", "matplotlib>=3.7",
                 "lm_eval>=0.4.9,<0.5", "accelerate>=0.26"],
        "gpu": ["flash-attn>=2.5"],
        "hf": ["transformers>=5.0,<6"],
        "eval": ["lm_eval>=0.4.9,<0.5", "accelerate>=0.26", "transformers>=5.0,<6"],  # tools/evaluate.py tasks
        "wandb": ["wandb>=0.16"],
        "plot": ["matplotlib>=3.7"],  # tools/compare_runs.py and tools/plot_metrics.py figures
    },
)
