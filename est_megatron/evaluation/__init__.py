"""Judging a pretrained model the paper's three ways, each in its own module.

`source` loads what is evaluated (a training checkpoint of any layout, a converted one, or a Hugging Face folder)
as our dense Transformer or as a Hugging Face folder; `perplexity` reports loss, perplexity and bits per byte per
corpus; `harness` runs lm-evaluation-harness tasks and formats the paper-style table; `hessian` estimates the
trace of the loss Hessian (Hutchinson). tools/evaluate.py and tools/hessian_trace.py are their command lines.
"""
