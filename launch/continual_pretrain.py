#!/usr/bin/env python
"""Runs est_megatron.cli.continual_pretrain (installed: `est-continual-pretrain`); `--help` says what it does."""
import sys

from est_megatron.cli.continual_pretrain import main

if __name__ == "__main__":
    sys.exit(main())
