"""Continual pretraining from an imported checkpoint with dense, EST, SAT or RAPTR training, on DeepSpeed.

    python tools/convert_hf_to_est.py --hf-dir TinyLlama-1.1B --save ckpt/tinyllama-init
    deepspeed --num_gpus 8 launch/continual_pretrain.py --init-from ckpt/tinyllama-init --method sat \\
        --data-path shards/chinese --ds_config ds_configs/zero3.json --train-steps 10000 --save ckpt/cpt

The model's shape comes from --init-from (--model and its overrides are ignored); the tokenizer defaults to the
checkpoint's (its tokenizer.model, else tokenizer.json, else vocab.json + merges.txt). Everything else is the
pretraining loop and its flags (`--help`): SAT's --sat-* flags (default: maxip + sampling + LORS), RAPTR's
--raptr-*, EST's --est-*. Resuming uses --load.
"""
import sys

from est_megatron.checkpoint.tags import latest_tag
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.training.arguments import build_parser, check_args

METHODS = ("dense", "est", "sat", "raptr")


def parse_args(argv=None, description=__doc__, defaults=None):
    """Pretraining's flags with SAT as the method; `defaults` (a script's own, e.g. SFT's) show in --help too."""
    parser = build_parser("tinyllama")
    parser.description = description
    parser.set_defaults(method="sat", **(defaults or {}))
    args = parser.parse_args(argv)
    args.family = "tinyllama"
    if args.method not in METHODS:
        raise UsageError(f"--method {args.method!r}: choose one of {', '.join(METHODS)}")
    resuming = args.load and latest_tag(args.load) is not None
    if not args.init_from and not resuming:
        raise UsageError("--init-from is required: a checkpoint from tools/convert_hf_to_est.py (or --load a run "
                         "to resume)")
    if args.init_from and not (args.tokenizer_model or args.vocab_file):
        from est_megatron.checkpoint.tokenizer import folder_tokenizer
        spec = folder_tokenizer(args.init_from)
        if spec is not None:
            args.tokenizer_type, args.tokenizer_model = spec.type, spec.model
            args.vocab_file, args.merge_file = spec.vocab_file, spec.merge_file
    return args


@exit_on_usage_error
def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    from est_megatron.training.trainer import pretrain
    return pretrain(args)


if __name__ == "__main__":
    sys.exit(main())
