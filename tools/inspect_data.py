#!/usr/bin/env python
"""Runs est_megatron.cli.inspect_data (installed: `est-inspect-data`); `--help` says what it does."""
from est_megatron.cli.inspect_data import main

if __name__ == "__main__":
    main()
