#!/usr/bin/env python
"""Runs est_megatron.cli.pretrain_gpt2 (installed: `est-pretrain-gpt2`); `--help` says what it does."""
import sys

from est_megatron.cli.pretrain_gpt2 import main

if __name__ == "__main__":
    sys.exit(main())
