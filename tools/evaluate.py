#!/usr/bin/env python
"""Runs est_megatron.cli.evaluate (installed: `est-evaluate`); `--help` says what it does."""
import sys

from est_megatron.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
