"""The pretraining command line of est_megatron.cli.pretrain_tinyllama and est_megatron.cli.pretrain_gpt2.

`main(argv, family)`: parse Megatron-style flags, then run the demo (`--demo`) or train. It sits above both
`training` and `demo`, so neither has to import the other. Both are imported only once chosen, so `--help` and a
flag error answer without loading DeepSpeed.
"""
from est_megatron.errors import exit_on_usage_error
from est_megatron.training.arguments import parse_args


@exit_on_usage_error
def main(argv=None, family: str = "tinyllama") -> int:
    args = parse_args(argv, family)
    if args.demo:
        from est_megatron.demo import run_demo
        return run_demo(args, argv)
    from est_megatron.training.trainer import pretrain
    return pretrain(args)
