"""Trace of the loss Hessian of a checkpoint (Hutchinson's estimator), for the whole model and per parameter
group: attention, MLP, embeddings, norms, each layer. The paper's Table 5 compares it between EST and dense runs
(a smaller trace: a flatter minimum).

    python tools/hessian_trace.py --load ckpt/run --data-path shards/slimpajama_val --seq-length 2048 \\
        --batches 10 --probes 8 --micro-batch-size 1 --output hessian.json

Each of --batches batches of --micro-batch-size samples (packed like training's, from the --data-path blend) gets
one gradient with its graph and --probes Rademacher probes, each one Hessian-vector product by double backward;
the estimate is the trace of the Hessian of the mean loss over those batches, with its standard error over the
probes (and, as stderr (data), with the spread between batches). Memory is about a training step's twice over:
no Hessian is formed. --load takes a training checkpoint (any ZeRO stage, TP/PP merged), a converted one or a
Hugging Face folder; the model is the dense one in fp32.
"""
import argparse
import json
import os
import sys


import numpy as np
import torch

from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--load", required=True, help="training checkpoint, converted checkpoint or Hugging Face folder")
    p.add_argument("--data-path", nargs="+", required=True,
                   help="shard prefixes (a blend with weights, as in training) the batches come from")
    p.add_argument("--seq-length", type=int, default=2048, help="tokens per sample")
    p.add_argument("--batches", type=int, default=10, help="batches N")
    p.add_argument("--probes", type=int, default=8, help="Rademacher probes per batch, at least 2")
    p.add_argument("--micro-batch-size", type=int, default=1, help="samples per batch")
    p.add_argument("--seed", type=int, default=1234, help="seeds the samples and the probes")
    p.add_argument("--data-cache-dir", "--data-cache-path", dest="data_cache_dir",
                   help="where sample indices are cached (default: beside the shards)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--output", default="hessian_trace.json", help="JSON file of the estimates")
    p.add_argument("--all-groups", action="store_true", help="print each layer's attention and MLP too")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    from est_megatron.data import build_datasets
    from est_megatron.evaluation.hessian import format_table, hutchinson_trace, model_groups, whole_logits_loss
    from est_megatron.evaluation.source import check_directory, load_model
    check_directory(args.load)
    for name in ("seq_length", "batches", "micro_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} needs a GPU and none is visible; use --device cpu")
    model_cfg, model = load_model(args.load, device)
    if args.seq_length > model_cfg.max_position_embeddings:
        raise UsageError(f"--seq-length {args.seq_length} exceeds the model's {model_cfg.max_position_embeddings} "
                         "positions; lower it")
    dataset = build_datasets(args.data_path, "1", args.seq_length, args.seed,
                             (args.batches * args.micro_batch_size, 0, 0), cache_dir=args.data_cache_dir)[0]

    def batches():
        for b in range(args.batches):
            rows = [dataset[i] for i in range(b * args.micro_batch_size, (b + 1) * args.micro_batch_size)]
            yield torch.from_numpy(np.stack(rows)).to(device)

    def loss(batch):
        return whole_logits_loss(model(batch[:, :-1]), batch[:, 1:])

    params = dict(model.named_parameters())
    groups = model_groups(list(params))
    estimate = hutchinson_trace(loss, params, batches(), args.probes, groups, args.seed, args.progress,
                                args.batches)
    shown = [g for g in groups if args.all_groups or not g.endswith((" attention", " mlp"))]
    print(f"Hessian trace of {args.load}: {args.batches} batch(es) x {args.micro_batch_size} x {args.seq_length} "
          f"tokens, {args.probes} probes each")
    print(format_table(estimate, shown))
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"load": os.path.abspath(args.load), "seq_length": args.seq_length,
                   "micro_batch_size": args.micro_batch_size, "seed": args.seed, **estimate.to_json()}, f, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
