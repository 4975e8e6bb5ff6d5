#!/usr/bin/env python
"""Runs est_megatron.cli.convert_to_hf (installed: `est-convert-to-hf`); `--help` says what it does."""
import sys

from est_megatron.cli.convert_to_hf import main

if __name__ == "__main__":
    sys.exit(main())
