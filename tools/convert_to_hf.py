#!/usr/bin/env python
"""Export an est_megatron checkpoint to a Hugging Face directory (LlamaForCausalLM or GPT2LMHeadModel).

    python tools/convert_to_hf.py --load ckpt/run --output hf/run [--tokenizer-model tokenizer.model]
    python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('hf/run')"

--load takes a training checkpoint directory (`latest` -> step_N/; the per-rank files of a tensor- or
pipeline-parallel run are merged into the single-process weights; a ZeRO-3 checkpoint is merged with DeepSpeed's
zero_to_fp32) or a converted one (model.safetensors + est_config.json). The tokenizer files
travel along: those beside the checkpoint, else --tokenizer-model, else the run's recorded --tokenizer-model;
a SentencePiece tokenizer.model gets a tokenizer_config.json for LlamaTokenizer.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from est_megatron.errors import UsageError, exit_on_usage_error  # noqa: E402
from est_megatron.hf import load_est_weights, tokenizer_files, write_hf_checkpoint  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="our checkpoint directory")
    p.add_argument("--output", required=True, help="Hugging Face output directory")
    p.add_argument("--tokenizer-model", help="SentencePiece tokenizer.model to ship with the export")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of the exported weights")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.load):
        raise UsageError(f"--load {args.load} is not a directory")
    model, state = load_est_weights(args.load)
    tokenizer = tokenizer_files(args.load)
    if args.tokenizer_model:
        if not os.path.isfile(args.tokenizer_model):
            raise UsageError(f"--tokenizer-model {args.tokenizer_model} does not exist")
        tokenizer["tokenizer.model"] = args.tokenizer_model
    write_hf_checkpoint(args.output, model, state, DTYPES[args.dtype], tokenizer)
    shipped = [n for n in ("tokenizer.model", "tokenizer.json") if os.path.isfile(os.path.join(args.output, n))]
    print(f"exported {args.load} -> {args.output} ({'LlamaForCausalLM' if model.is_llama else 'GPT2LMHeadModel'}, "
          f"{args.dtype}; tokenizer: {', '.join(shipped) or 'none found, pass --tokenizer-model'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
