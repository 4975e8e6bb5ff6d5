"""Write two lm-eval multiple-choice tasks for `--demo` models on text the demo corpus never contains: the next
line of held-out standard-library code, and the second half of a held-out docstring (the stdlib directories the
demo skips: test/, idlelib/, tkinter/, lib2to3/, turtledemo/, ...). Tiny demo models are at chance on the GPT4All
suite; these stay in their domain. The folder works from any directory (data paths are absolute). It also gets
the held-out text as two corpora, prose (docstrings) and code, for a loss on each.

    python tools/make_demo_tasks.py --output-dir demo_tasks
    python tools/evaluate.py --load demo_run/checkpoints --include-path demo_tasks \\
        --tasks demo_code_next_line,demo_docstring_continuation
"""
import argparse
import os
import shlex

from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", default="demo_tasks", help="folder of the YAML tasks and their jsonl data")
    p.add_argument("--items", type=int, default=400, help="items per task (answer slots balanced over 4 choices)")
    p.add_argument("--seed", type=int, default=0, help="which lines and docstrings are drawn, and the distractors")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    from est_megatron.evaluation.demo_tasks import write_demo_tasks
    report = write_demo_tasks(args.output_dir, args.items, args.seed)
    print(f"demo tasks from {report['heldout_files']} held-out sources under {report['root']} "
          f"[{report['seconds']:.1f}s]")
    for name, task in report["tasks"].items():
        print(f"  {name}: {task['items']} items ({task['skipped_seen']} skipped, their answer is in the demo "
              f"corpus) -> {task['yaml']}")
    folder = os.path.dirname(next(iter(report["tasks"].values()))["yaml"])
    print("run them with:\n  python tools/evaluate.py --load CHECKPOINT --include-path "
          f"{shlex.quote(folder)} --tasks {','.join(report['tasks'])}")
    corpora = report["corpora"]
    print("held-out corpora: " + ", ".join(f"{name} {c['documents']} documents -> {c['path']}"
                                          for name, c in corpora.items()))
    print("a loss on each: tokenize with the demo's tokenizer, then score:")
    for name, c in corpora.items():
        print(f"  python tools/preprocess_data.py --input {shlex.quote(c['path'])} --tokenizer-model "
              f"DEMO_DIR/tokenizer/demo.model --output-prefix {shlex.quote(os.path.join(folder, 'heldout_' + name))}")
    prefixes = " ".join(shlex.quote(os.path.join(folder, "heldout_" + name)) for name in corpora)
    print(f"  python tools/evaluate.py --load CHECKPOINT --data-path {prefixes}")
    return report


if __name__ == "__main__":
    main()
