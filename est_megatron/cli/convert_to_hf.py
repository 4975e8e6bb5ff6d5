"""Export an est_megatron checkpoint to a Hugging Face directory (LlamaForCausalLM or GPT2LMHeadModel).

    python tools/convert_to_hf.py --load ckpt/run --output hf/run [--tokenizer-model tokenizer.model]
    python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('hf/run')"
    python -c "import transformers; transformers.AutoTokenizer.from_pretrained('hf/run')"

--load takes a training checkpoint directory (`latest` -> step_N/, or a step_N/ itself; the per-rank files of a
tensor- or pipeline-parallel run and ZeRO-3's partitions are merged into the single-process weights, after its
checksums are verified as training's --load verifies them) or a converted one (model.safetensors +
est_config.json). The tokenizer is the --tokenizer-* flags', else the files beside the checkpoint, else the run's
recorded tokenizer flags; the export gets a fast tokenizer.json (any tokenizer type, built at export time) with
tokenizer_config.json, so AutoTokenizer loads it with no extra package, and config.json gets its bos/eos/pad ids.
Encoding with special tokens prepends BOS when the run's shards did (their manifests' add_bos; SFT always does), or
as --add-bos-token says. Weights above --max-shard-size (default 5GB, as Hugging Face's) are written as shards with
model.safetensors.index.json.
"""
import argparse
import os
import sys


import torch

from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.data.tokenizer import add_tokenizer_args, spec_from_args
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.checkpoint.safetensors_files import DEFAULT_MAX_SHARD_SIZE, parse_shard_size
from est_megatron.checkpoint.tokenizer import checkpoint_tokenizer
from est_megatron.hf import write_hf_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--load", required=True, help="our checkpoint directory")
    p.add_argument("--output", required=True, help="Hugging Face output directory")
    add_tokenizer_args(p, model_help="tokenizer to ship with the export (default: the checkpoint's): a "
                                     "SentencePiece .model, or for HuggingFaceTokenizer a tokenizer.json or folder")
    p.add_argument("--add-bos-token", choices=("yes", "no"),
                   help="whether the exported tokenizer prepends BOS (default: as the run's shard manifests say)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of the exported weights")
    p.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                   help="largest weight file; a bigger model is written as numbered model-*-of-*.safetensors "
                        "shards with model.safetensors.index.json (bytes, or e.g. 5GB, 500MB, 2GiB)")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    parse_shard_size(args.max_shard_size)  # a bad size stops here, before the weights are read
    if not os.path.isdir(args.load):
        raise UsageError(f"--load {args.load} is not a directory")
    model, state = load_est_weights(args.load)
    tokenizer, add_bos = checkpoint_tokenizer(args.load)
    if args.tokenizer_model or args.vocab_file or args.tokenizer_type != "SentencePieceTokenizer":
        tokenizer = spec_from_args(args)
    if args.add_bos_token:
        add_bos = args.add_bos_token == "yes"
    files = write_hf_checkpoint(args.output, model, state, DTYPES[args.dtype], tokenizer, add_bos,
                                args.max_shard_size)
    shipped = f"{tokenizer.type}, tokenizer.json" if tokenizer else "none found, pass --tokenizer-model"
    print(f"exported {args.load} -> {args.output} ({'LlamaForCausalLM' if model.is_llama else 'GPT2LMHeadModel'}, "
          f"{args.dtype}, {len(files)} weight file{'s' if len(files) > 1 else ''}; tokenizer: {shipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
