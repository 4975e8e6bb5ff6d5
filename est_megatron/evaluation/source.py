"""What an evaluation reads: a checkpoint directory as our dense Transformer, as a Hugging Face folder, and its
tokenizer.

Three kinds of directory are accepted, told apart by their files: a training checkpoint (`latest` -> step_N/, any
ZeRO stage, tensor/pipeline-parallel ranks merged, checksums verified), our converted checkpoint (model.safetensors
+ est_config.json), both read by est_megatron.checkpoint, and a Hugging Face folder (config.json, read by
est_megatron.hf). The evaluated weights are exactly what tools/convert_to_hf.py exports.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, Tuple

import torch

from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.checkpoint.standalone import EST_CONFIG
from est_megatron.checkpoint.tokenizer import checkpoint_tokenizer
from est_megatron.hf import read_hf_checkpoint, write_hf_checkpoint
from est_megatron.model.transformer import Transformer


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, EST_CONFIG))


def check_directory(path: str, flag: str = "--load") -> None:
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is not a directory; give a training checkpoint, a converted checkpoint or "
                         "a Hugging Face folder")


def load_model(path: str, device: torch.device) -> Tuple[ModelConfig, Transformer]:
    """Our Transformer with the directory's weights, fp32, in eval mode (the dense model: no plan)."""
    check_directory(path)
    model_cfg, state = read_hf_checkpoint(path) if is_hf_folder(path) else load_est_weights(path)
    model = Transformer(model_cfg)
    model.load_state_dict(state, strict=True)
    return model_cfg, model.to(device=device, dtype=torch.float32).eval()


def load_tokenizer(path: str, override=None):
    """The tokenizer object of a checkpoint (`override`: a TokenizerSpec from the command line), or None."""
    spec = override or checkpoint_tokenizer(path)[0]
    return spec.load() if spec is not None else None


@contextlib.contextmanager
def as_hf_folder(path: str, tokenizer_spec=None) -> Iterator[str]:
    """A Hugging Face folder of the checkpoint: the folder itself, or an fp32 export into a temporary directory
    that is removed afterwards (the weights and tokenizer tools/convert_to_hf.py would write)."""
    check_directory(path)
    if is_hf_folder(path):
        if tokenizer_spec is not None:
            raise UsageError(f"{path} is a Hugging Face folder with its own tokenizer; drop the --tokenizer-* flags "
                             "(they name the tokenizer of our checkpoints)")
        yield path
        return
    model_cfg, state = load_est_weights(path)
    spec, adds_bos = checkpoint_tokenizer(path)
    spec = tokenizer_spec or spec
    if spec is None:
        raise UsageError(f"{path} has no tokenizer beside it and its run recorded none that still exists; pass "
                         "--tokenizer-model (the tokenizer the model was trained with)")
    with tempfile.TemporaryDirectory(prefix="est_eval_hf_") as folder:
        write_hf_checkpoint(folder, model_cfg, state, torch.float32, spec, adds_bos)
        yield folder
