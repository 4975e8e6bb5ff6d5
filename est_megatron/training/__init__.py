"""est_megatron.training: the pretraining loop around DeepSpeed, its arguments, checkpoints and logs.

`main(argv, family)` is what launch/pretrain_*.py call: parse Megatron-style flags, run the demo or train.
"""
from est_megatron.errors import exit_on_usage_error


@exit_on_usage_error
def main(argv=None, family: str = "tinyllama") -> int:
    from est_megatron.training.arguments import parse_args
    args = parse_args(argv, family)
    if args.demo:
        from est_megatron.demo import run_demo
        return run_demo(args, argv)
    from est_megatron.training.loop import pretrain
    return pretrain(args)
