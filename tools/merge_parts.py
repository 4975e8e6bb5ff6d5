#!/usr/bin/env python
"""Runs est_megatron.cli.merge_parts (installed: `est-merge-parts`); `--help` says what it does."""
from est_megatron.cli.merge_parts import main

if __name__ == "__main__":
    main()
