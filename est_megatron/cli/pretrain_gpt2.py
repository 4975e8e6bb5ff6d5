"""Pretrain GPT-2-base (default: the paper's setup, 150k steps of 512 x 1024 tokens, linear decay) with EST.

    deepspeed --num_gpus 8 launch/pretrain_gpt2.py --ds_config ds_configs/zero1.json \\
        --data-path shards/openwebtext --tokenizer-model gpt2_sp.model --save ckpt/gpt2 --log-dir logs/gpt2

Runs under `deepspeed` (one or many nodes with --hostfile), `torchrun` or plain `python` (one process).
`--help` lists every flag. From an installed package the same command is `est-pretrain-gpt2`,
`python -m est_megatron.cli.pretrain_gpt2` or `deepspeed --module est_megatron.cli.pretrain_gpt2`.
"""
import sys

from est_megatron.cli import pretrain


def main(argv=None) -> int:
    return pretrain.main(argv, family="gpt2")


if __name__ == "__main__":
    sys.exit(main())
