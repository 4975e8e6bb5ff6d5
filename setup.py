"""Installs est_megatron: Evolving Subnetwork Training on DeepSpeed."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def package_version() -> str:
    """The one version string, est_megatron.__version__, read without importing the package (and torch)."""
    with open(os.path.join(HERE, "est_megatron", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


# Console scripts: each runs one module of est_megatron.cli, the code of launch/NAME.py or tools/NAME.py.
CONSOLE_SCRIPTS = {
    "est-pretrain": "pretrain_tinyllama",
    "est-pretrain-gpt2": "pretrain_gpt2",
    "est-continual-pretrain": "continual_pretrain",
    "est-finetune": "finetune",
    "est-preprocess": "preprocess_data",
    "est-train-tokenizer": "train_tokenizer",
    "est-inspect-data": "inspect_data",
    "est-merge-parts": "merge_parts",
    "est-convert-to-hf": "convert_to_hf",
    "est-convert-hf-to-est": "convert_hf_to_est",
    "est-evaluate": "evaluate",
    "est-make-demo-tasks": "make_demo_tasks",
    "est-hessian-trace": "hessian_trace",
    "est-plan": "est_plan",
    "est-compare-runs": "compare_runs",
    "est-plot-metrics": "plot_metrics",
    "est-memory-plan": "memory_plan",
}

setup(
    name="est_megatron",
    version=package_version(),
    description="Evolving Subnetwork Training (EST), RAPTR and SAT for Llama/GPT-2 pretraining on DeepSpeed",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["est_megatron", "est_megatron.*"]),
    package_data={"est_megatron": ["ds_configs/*.json"]},  # the launchers' --ds_config files
    entry_points={"console_scripts": [f"{name}=est_megatron.cli.console:{module}"
                                      for name, module in CONSOLE_SCRIPTS.items()]},
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
        # triton: the sparse step's GPU kernel runs under Triton's interpreter on the CPU and is compiled for
        # Hopper without a GPU (tests/test_sparse_optimizer.py); torch's CUDA builds bring their own
        # pytest-xdist: the suite runs on two workers (-n 2), whole files each, longest first (pytest.ini,
        # tests/conftest.py; 3.8 brought --no-loadscope-reorder), most of its time being processes waiting on each other
        "test": ["pytest>=7", "pytest-xdist>=3.8", "ruff>=0.5", "transformers>=5.0,<6", "megatron-core>=0.14",
                 "matplotlib>=3.7", "lm_eval>=0.4.9,<0.5", "accelerate>=0.26",
                 "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "gpu": ["flash-attn>=2.5", "liger-kernel>=0.5"],  # flash-attention; the fused linear cross-entropy
        "hf": ["transformers>=5.0,<6"],
        "eval": ["lm_eval>=0.4.9,<0.5", "accelerate>=0.26", "transformers>=5.0,<6"],  # tools/evaluate.py tasks
        "wandb": ["wandb>=0.16"],
        "plot": ["matplotlib>=3.7"],  # tools/compare_runs.py and tools/plot_metrics.py figures
    },
)
