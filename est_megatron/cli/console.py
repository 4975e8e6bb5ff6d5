"""The console scripts setup.py declares (`est-pretrain = est_megatron.cli.console:pretrain_tinyllama`, ...).

Several mains return what they made (a manifest, a report) to in-process callers, and a console script exits with
its function's value, so each function returns the main's status when it is an int and 0 otherwise. A command
imports its module only when called, so one command never loads another's dependencies.
"""
import importlib


def _console_script(module: str):
    def command() -> int:
        status = importlib.import_module(f"est_megatron.cli.{module}").main()
        return status if isinstance(status, int) else 0
    command.__name__ = command.__qualname__ = module
    command.__doc__ = f"Runs est_megatron.cli.{module}.main on the command line's arguments."
    return command


pretrain_tinyllama = _console_script("pretrain_tinyllama")
pretrain_gpt2 = _console_script("pretrain_gpt2")
continual_pretrain = _console_script("continual_pretrain")
finetune = _console_script("finetune")
preprocess_data = _console_script("preprocess_data")
train_tokenizer = _console_script("train_tokenizer")
inspect_data = _console_script("inspect_data")
merge_parts = _console_script("merge_parts")
convert_to_hf = _console_script("convert_to_hf")
convert_hf_to_est = _console_script("convert_hf_to_est")
evaluate = _console_script("evaluate")
make_demo_tasks = _console_script("make_demo_tasks")
hessian_trace = _console_script("hessian_trace")
est_plan = _console_script("est_plan")
compare_runs = _console_script("compare_runs")
plot_metrics = _console_script("plot_metrics")
memory_plan = _console_script("memory_plan")
