#!/usr/bin/env python
"""Runs est_megatron.cli.preprocess_data (installed: `est-preprocess`); `--help` says what it does."""
from est_megatron.cli.preprocess_data import main

if __name__ == "__main__":
    main()
