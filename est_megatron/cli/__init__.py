"""The command lines. `est_megatron.cli.NAME` is the code of launch/NAME.py or tools/NAME.py (those files only
run it): each module has `main(argv=None)` and runs as `python -m est_megatron.cli.NAME`; `pretrain` is the
parser-and-dispatch shared by both pretraining launchers, and `console` holds the console scripts setup.py
declares (`est-pretrain`, `est-preprocess`, ...).
"""
