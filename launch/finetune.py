#!/usr/bin/env python
"""Runs est_megatron.cli.finetune (installed: `est-finetune`); `--help` says what it does."""
import sys

from est_megatron.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
