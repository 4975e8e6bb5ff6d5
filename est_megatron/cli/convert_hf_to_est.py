"""Import a local Hugging Face Llama-family (or GPT-2) checkpoint into an est_megatron checkpoint.

    python tools/convert_hf_to_est.py --hf-dir TinyLlama-1.1B --save ckpt/tinyllama-init
    python launch/continual_pretrain.py --init-from ckpt/tinyllama-init --method sat ...

Reads config.json and the weights (model.safetensors, sharded *.safetensors, or pytorch_model*.bin; GQA,
tied or untied embeddings). Writes model.safetensors (our parameter names, Q/K/V fused group-major, [gate; up]),
est_config.json (our ModelConfig) and copies the tokenizer files (tokenizer.model, tokenizer_config.json, ...).
No network: the directory must be on disk.
"""
import argparse
import os
import sys


import torch

from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.checkpoint.standalone import save_est_checkpoint
from est_megatron.checkpoint.tokenizer import tokenizer_files
from est_megatron.hf import read_hf_checkpoint
from est_megatron.help_format import HelpFormatter

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--hf-dir", required=True, help="Hugging Face model directory (config.json + weights)")
    p.add_argument("--save", required=True, help="output directory of our checkpoint")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of the saved weights")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.hf_dir):
        raise UsageError(f"--hf-dir {args.hf_dir} is not a directory")
    model, state = read_hf_checkpoint(args.hf_dir)
    if DTYPES[args.dtype] is not None:
        state = {k: v.to(DTYPES[args.dtype]) for k, v in state.items()}
    save_est_checkpoint(args.save, model, state, source=os.path.abspath(args.hf_dir),
                        tokenizer=tokenizer_files(args.hf_dir))
    print(f"converted {args.hf_dir} ({model.flavour}, {model.num_layers} layers, hidden {model.hidden_size}, "
          f"{model.num_attention_heads} heads / {model.num_query_groups} kv, {model.num_parameters():,} parameters) "
          f"-> {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
