#!/usr/bin/env python
"""Runs est_megatron.cli.convert_hf_to_est (installed: `est-convert-hf-to-est`); `--help` says what it does."""
import sys

from est_megatron.cli.convert_hf_to_est import main

if __name__ == "__main__":
    sys.exit(main())
