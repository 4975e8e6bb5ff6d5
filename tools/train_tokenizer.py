#!/usr/bin/env python
"""Runs est_megatron.cli.train_tokenizer (installed: `est-train-tokenizer`); `--help` says what it does."""
from est_megatron.cli.train_tokenizer import main

if __name__ == "__main__":
    main()
