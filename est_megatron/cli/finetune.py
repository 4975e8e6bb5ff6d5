"""Supervised fine-tuning (SFT) on jsonl instructions with dense, EST, SAT or RAPTR training, on DeepSpeed.

    deepspeed --num_gpus 8 launch/finetune.py --init-from ckpt/llama2-7b --data-path alpaca.jsonl \\
        --ds_config ds_configs/zero3.json --method sat --seq-length 1024 --train-steps 2000 --save ckpt/sft

--data-path takes jsonl files of {"prompt", "response"} or chat {"messages": [{"role", "content"}, ...]}
records; the loss covers only response (assistant) tokens, prompt tokens are labelled -100
(est_megatron/data/sft.py). --sft-packing pad (default) gives each example its own window; pack concatenates
examples into full windows. The last --sft-valid-fraction of the records is the validation set. The rest is
launch/continual_pretrain.py: the model's shape comes from --init-from, the training loop is the pretraining one.
"""
import sys

from est_megatron.cli.continual_pretrain import parse_args as parse_common
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.training.arguments import check_args


# SAT paper's SFT setup: small LR, cosine, no weight decay; flags override them.
SFT_DEFAULTS = dict(lr=2e-5, min_lr=0.0, lr_warmup_steps=10, weight_decay=0.0, seq_length=1024,
                    global_batch_size=128, micro_batch_size=4, train_steps=1000, lr_decay_style="cosine")


def parse_args(argv=None):
    import argparse
    extra = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    extra.add_argument("--sft-packing", choices=("pad", "pack"), default="pad",
                       help="one example per window (padded/truncated), or examples packed into full windows")
    extra.add_argument("--sft-valid-fraction", type=float, default=0.02,
                       help="fraction of the records (the last ones) held out for validation")
    if argv is None:
        argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        extra.print_help()
    sft, rest = extra.parse_known_args(argv)
    args = parse_common(rest, description=__doc__, defaults=SFT_DEFAULTS)
    if not 0.0 <= sft.sft_valid_fraction < 1.0:
        raise UsageError(f"--sft-valid-fraction must be in [0, 1), got {sft.sft_valid_fraction}")
    args.sft_packing, args.sft_valid_fraction = sft.sft_packing, sft.sft_valid_fraction
    return args


@exit_on_usage_error
def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    from est_megatron.data.sft import build_sft_data, collate, split_batch
    from est_megatron.training.data_hooks import DataHooks
    from est_megatron.training.trainer import pretrain
    return pretrain(args, DataHooks(build_sft_data, collate, split_batch))


if __name__ == "__main__":
    sys.exit(main())
