#!/usr/bin/env python
"""Runs est_megatron.cli.pretrain_tinyllama (installed: `est-pretrain`); `--help` says what it does."""
import sys

from est_megatron.cli.pretrain_tinyllama import main

if __name__ == "__main__":
    sys.exit(main())
