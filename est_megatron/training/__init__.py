"""est_megatron.training: the pretraining loop around DeepSpeed, its arguments, methods, checkpoints and logs.

The command line that runs it is `est_megatron.cli.pretrain.main`.
"""
