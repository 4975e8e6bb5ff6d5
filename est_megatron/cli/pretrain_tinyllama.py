"""Pretrain TinyLlama-1.1B (default: the paper's setup, 60k steps of 1024 x 2048 tokens) with EST on DeepSpeed.

    deepspeed --num_gpus 8 launch/pretrain_tinyllama.py --ds_config ds_configs/zero1.json \\
        --data-path 0.7 shards/slimpajama 0.3 shards/starcoder --tokenizer-model tokenizer.model \\
        --save ckpt/tinyllama --log-dir logs/tinyllama

    python launch/pretrain_tinyllama.py --demo    # a few minutes on CPU: corpus, tokenizer, shards, training

Runs under `deepspeed` (one or many nodes with --hostfile), `torchrun` or plain `python` (one process).
`--help` lists every flag. From an installed package the same command is `est-pretrain`,
`python -m est_megatron.cli.pretrain_tinyllama` or `deepspeed --module est_megatron.cli.pretrain_tinyllama`.
"""
import sys

from est_megatron.cli import pretrain


def main(argv=None) -> int:
    return pretrain.main(argv, family="tinyllama")


if __name__ == "__main__":
    sys.exit(main())
