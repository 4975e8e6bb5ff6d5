#!/usr/bin/env python
"""Runs est_megatron.cli.make_demo_tasks (installed: `est-make-demo-tasks`); `--help` says what it does."""
from est_megatron.cli.make_demo_tasks import main

if __name__ == "__main__":
    main()
