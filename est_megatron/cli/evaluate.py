"""Evaluate a checkpoint the paper's ways: zero-shot tasks with lm-evaluation-harness, and loss / perplexity /
bits per byte on whole corpora.

    # the GPT4All suite (arc_easy, arc_challenge, boolq, hellaswag, openbookqa, piqa, winogrande), zero-shot
    python tools/evaluate.py --load ckpt/run --output results/run.json
    # local YAML tasks (e.g. `dataset_path: json` on jsonl files), no network needed
    python tools/evaluate.py --load ckpt/run --include-path my_tasks --tasks my_task
    # loss and perplexity per corpus (dense model), e.g. SlimPajama's validation set and Starcoder apart
    python tools/evaluate.py --load ckpt/run --data-path shards/slimpajama_val shards/starcoder_val

--load takes a training checkpoint (`latest` -> step_N/; any ZeRO stage; tensor/pipeline-parallel ranks merged as
tools/convert_to_hf.py merges them), a converted checkpoint or a Hugging Face folder. For lm-eval a checkpoint is
exported to a temporary Hugging Face folder (weights and tokenizer as tools/convert_to_hf.py writes them) and run
through lm-eval's HFLM. Task data comes from the Hugging Face Hub when it is reachable, else from the datasets
cache (set HF_DATASETS_OFFLINE=1 or --hub offline to skip the probe), and from --include-path. --data-path
corpora are scored with the training datasets' code (packed seq_length + 1 windows), one epoch each by default.
Results go to --output as JSON; the table is printed.
"""
import argparse
import json
import os
import sys

from est_megatron.data.tokenizer import add_tokenizer_args, spec_from_args
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.evaluation import harness

DTYPES = ("float32", "bfloat16", "float16")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--load", required=True,
                   help="training checkpoint, converted checkpoint or Hugging Face folder to evaluate")
    p.add_argument("--output", default="eval_results.json", help="JSON file of the results")
    add_tokenizer_args(p, model_help="the tokenizer the model was trained with (default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    g = p.add_argument_group("lm-evaluation-harness tasks (run unless only --data-path is given)")
    g.add_argument("--tasks", nargs="+", help=f"task names, comma or space separated (default: the GPT4All suite, "
                                              f"{','.join(harness.GPT4ALL_TASKS)})")
    g.add_argument("--include-path", nargs="+", help="folders of extra lm-eval YAML tasks")
    g.add_argument("--num-fewshot", type=int, help="few-shot examples per task (default: each task's own; 0 for the "
                                                                "GPT4All suite)")
    g.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    g.add_argument("--limit", type=float, help="at most this many documents per task (a fraction if < 1): a quick "
                                               "look, not a result")
    g.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype in lm-eval")
    g.add_argument("--hub", choices=("auto", "online", "offline"), default="auto",
                   help="where task data comes from: auto probes the Hub (offline when unreachable or "
                        "HF_DATASETS_OFFLINE=1), offline reads only the datasets cache")

    g = p.add_argument_group("perplexity on corpora")
    g.add_argument("--data-path", nargs="+", help="shard prefixes (weights allowed, as in training), each scored "
                                                  "on its own")
    g.add_argument("--seq-length", type=int, help="tokens per sample (default: the run's --seq-length, else the "
                                                  "model's positions)")
    g.add_argument("--samples", type=int, help="samples per corpus (default: one epoch, every token once)")
    g.add_argument("--micro-batch-size", type=int, default=4, help="samples per forward pass")
    g.add_argument("--seed", type=int, default=1234, help="document shuffle seed, as training's --seed")
    g.add_argument("--data-cache-dir", "--data-cache-path", dest="data_cache_dir",
                   help="where sample indices are cached (default: beside the shards)")
    return p


def _device(name):
    import torch
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} needs a GPU and none is visible; use --device cpu")
    return torch.device(name)


def _tokenizer_override(args):
    if args.tokenizer_model or args.vocab_file or args.tokenizer_type != "SentencePieceTokenizer":
        return spec_from_args(args)
    return None


def _run_seq_length(load, model_cfg):
    """The --seq-length the checkpoint's run trained with, else the model's positions."""
    from est_megatron.checkpoint.reader import run_state  # the run's recorded flags
    recorded = (run_state(load).get("args") or {}).get("seq_length")
    return recorded or model_cfg.max_position_embeddings


def perplexity(args, device):
    from est_megatron.evaluation.perplexity import evaluate_corpora, format_table
    from est_megatron.evaluation.source import load_model, load_tokenizer
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be positive, got {args.samples}")
    model_cfg, model = load_model(args.load, device)
    tokenizer = load_tokenizer(args.load, _tokenizer_override(args))
    seq_length = args.seq_length or _run_seq_length(args.load, model_cfg)
    results = evaluate_corpora(model, model_cfg, args.data_path, seq_length, args.micro_batch_size, device,
                               tokenizer, args.samples, args.seed, args.data_cache_dir, args.progress)
    print(f"loss per corpus of {args.load} (dense model, seq {seq_length})")
    print(format_table(results))
    return {"seq_length": seq_length, "corpora": [r.to_json() for r in results]}


def tasks(args, device, mode):
    from est_megatron.evaluation.source import as_hf_folder
    names = harness.parse_tasks(args.tasks)
    print(f"lm-eval tasks {', '.join(names)} (task data: {'Hub or cache' if mode == 'online' else 'cache only'}"
          f"{', plus ' + ' '.join(args.include_path) if args.include_path else ''})")
    with as_hf_folder(args.load, _tokenizer_override(args)) as folder:
        results = harness.run_tasks(folder, names, args.include_path, args.batch_size, str(device), args.dtype,
                                    args.num_fewshot, args.limit)
    out = harness.summary(results)
    print(harness.format_table(out["table"]))
    return out


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    from est_megatron.evaluation.source import check_directory
    check_directory(args.load)
    device = _device(args.device)
    run_tasks = args.tasks or not args.data_path
    mode = harness.choose_hub_mode(args.hub) if run_tasks else None  # before anything imports `datasets`
    report = {"load": os.path.abspath(args.load)}
    if args.data_path:
        report["perplexity"] = perplexity(args, device)
    if run_tasks:
        report["lm_eval"] = tasks(args, device, mode)
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
