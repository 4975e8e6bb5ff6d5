"""Peak memory of the loss: whole logits then cross-entropy, against the chunked output layer, side by side.

    python tools/bench/loss_memory.py --tokens 8192 --hidden-size 512 --vocab-size 32000

Each variant runs in a fresh process (so one's freed memory cannot hide the other's peak) on the same random
hidden states, output weight and labels: forward and backward of the loss, fp32 on the CPU (host peak RSS above
the level after set-up) or on CUDA (the allocator's peak above the set-up). Printed: each peak, the size of the
whole logits plus their gradient, and the saving as a fraction of that size.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.tensor_parallel.output_layer import chunked_linear_cross_entropy

FP32 = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--tokens", type=int, default=8192, help="tokens of the micro-batch (batch x sequence)")
    p.add_argument("--hidden-size", type=int, default=512, help="hidden size")
    p.add_argument("--vocab-size", type=int, default=32000, help="vocabulary (rows of the output weight)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--variant", choices=("whole", "chunked"), help=argparse.SUPPRESS)  # the worker's
    p.add_argument("--json", help="also write the results here")
    return p


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> int:
    """This process: set up, then the peak added by one forward and backward of the loss."""
    device = args.device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.tokens, args.hidden_size, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(args.vocab_size, args.hidden_size, generator=gen) * 0.02).to(device).requires_grad_()
    labels = torch.randint(0, args.vocab_size, (args.tokens,), generator=gen).to(device)
    grads = [torch.zeros_like(x), torch.zeros_like(weight)]  # the gradients' own memory is in both baselines
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_bytes(device)
    if args.variant == "whole":
        loss = F.cross_entropy(F.linear(x, weight).float(), labels)
    else:
        loss = chunked_linear_cross_entropy(x, weight, labels, None, args.vocab_size)
    for grad, got in zip(grads, torch.autograd.grad(loss, (x, weight))):
        grad.copy_(got)
    if device == "cuda":
        torch.cuda.synchronize()
    return peak_bytes(device) - before


@exit_on_usage_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.variant:
        print(json.dumps({"peak": measure(args)}))
        return 0
    flags = [f"--tokens={args.tokens}", f"--hidden-size={args.hidden_size}", f"--vocab-size={args.vocab_size}",
             f"--device={args.device}"]
    peaks = {}
    for variant in ("whole", "chunked"):
        out = subprocess.run([sys.executable, "-m", "est_megatron.bench.loss_memory", f"--variant={variant}"] + flags,
                             capture_output=True, text=True, check=True).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak"]
    logits = 2 * args.tokens * args.vocab_size * FP32  # the whole logits and their gradient, fp32
    saved = (peaks["whole"] - peaks["chunked"]) / logits
    mib = 2 ** 20
    print(f"loss of {args.tokens} tokens, hidden {args.hidden_size}, vocabulary {args.vocab_size} on {args.device}: "
          f"peak above set-up {peaks['whole'] / mib:.0f} MiB whole logits, {peaks['chunked'] / mib:.0f} MiB chunked; "
          f"the logits and their gradient are {logits / mib:.0f} MiB, of which chunking saves {saved:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "peaks": peaks, "logits_and_grad": logits, "saved_fraction": saved}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
