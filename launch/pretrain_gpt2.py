#!/usr/bin/env python
"""Pretrain GPT-2-base (default: the paper's setup, 150k steps of 512 x 1024 tokens, linear decay) with EST.

    deepspeed --num_gpus 8 launch/pretrain_gpt2.py --ds_config ds_configs/zero1.json \\
        --data-path shards/openwebtext --tokenizer-model gpt2_sp.model --save ckpt/gpt2 --log-dir logs/gpt2

Runs under `deepspeed` (one or many nodes with --hostfile), `torchrun` or plain `python` (one process).
`--help` lists every flag.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from est_megatron.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(family="gpt2"))
