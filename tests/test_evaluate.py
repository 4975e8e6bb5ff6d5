"""tools/evaluate.py on a tiny checkpoint trained here with per-corpus validation: the training logs report each
--valid-data-path corpus, the perplexity tool matches a direct computation through the exported Hugging Face
model and training's own validation, and lm-evaluation-harness runs the two local tasks of tests/eval_tasks end
to end with results equal to our model's own log-likelihoods."""
import collections
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_fixtures import load_tool, make_text
from dist_utils import OTHER_WORDS, REPO, corpus, launch, read_metrics, tiny_shards, train_flags  # noqa: F401
from est_megatron.data.corpus import Corpus
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.model.transformer import Transformer

evaluate = load_tool("tools/evaluate.py")
TASKS = os.path.join(REPO, "tests", "eval_tasks")


@pytest.fixture(scope="module")
def run(tiny_shards, tmp_path_factory):  # noqa: F811
    """8 steps on the training corpus, validated on two held-out corpora apart, tested on one; a checkpoint."""
    work = tmp_path_factory.mktemp("eval_run")
    rng = random.Random(21)
    texts = {"heldout_prose": [make_text(rng, rng.randint(30, 90)) for _ in range(40)],
             "heldout_code": [" ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(20, 60)))
                              for _ in range(40)]}
    prefixes = {name: corpus(work, name, t, tiny_shards["tokenizer"]) for name, t in texts.items()}
    argv = train_flags(tiny_shards, work, steps=8, **{"--data-path": None, "--eval-interval": "4",
                                                      "--save": str(work / "ckpt"), "--save-interval": "100"})
    argv += ["--train-data-path", tiny_shards["prefix"], "--valid-data-path", *prefixes.values(),
             "--test-data-path", prefixes["heldout_code"]]
    result = launch(argv, nproc=1)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return dict(work=work, ckpt=str(work / "ckpt"), prefixes=prefixes, texts=texts, stdout=result.stdout,
                tokenizer=tiny_shards["tokenizer"], records=read_metrics(work / "logs"))


def test_training_reports_each_validation_corpus(run):
    vals = [r for r in run["records"] if "val_loss" in r]
    assert [r["step"] for r in vals] == [4, 8]
    for r in vals:
        by = r["val_loss_by_corpus"]
        assert set(by) == {"heldout_prose", "heldout_code"} and by["heldout_prose"] != by["heldout_code"]
        tokens = {n: Corpus(p).num_tokens for n, p in run["prefixes"].items()}
        expected = sum(tokens[n] * by[n] for n in by) / sum(tokens.values())  # weighted by token counts
        assert r["val_loss"] == pytest.approx(expected, rel=1e-12)
        assert r["val_ppl_by_corpus"]["heldout_code"] == pytest.approx(math.exp(by["heldout_code"]))
    assert vals[1]["val_loss_by_corpus"]["heldout_prose"] < vals[0]["val_loss_by_corpus"]["heldout_prose"]
    tests = [r for r in run["records"] if "test_loss" in r]
    assert [r["step"] for r in tests] == [8]
    assert set(tests[0]["test_loss_by_corpus"]) == {"heldout_code"}  # other samples of the same corpus
    assert tests[0]["test_loss"] == pytest.approx(vals[1]["val_loss_by_corpus"]["heldout_code"], rel=0.1)
    assert "| heldout_prose " in run["stdout"] and "| heldout_code " in run["stdout"]


def _hf_losses(hf_dir, dataset):
    """Summed next-token cross-entropy and token count of every sample, through transformers' own model."""
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            ids = torch.from_numpy(np.stack([dataset[i] for i in range(start, min(start + 64, len(dataset)))]))
            logits = model(ids[:, :-1]).logits.double()
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(),
                                                             reduction="sum"))
            count += ids[:, 1:].numel()
    return total, count


def test_corpus_perplexity_matches_direct_computation(run, tmp_path):
    out = tmp_path / "ppl.json"
    assert evaluate.main(["--load", run["ckpt"], "--data-path", *run["prefixes"].values(), "--seq-length", "32",
                          "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())["perplexity"]
    assert report["seq_length"] == 32
    assert load_tool("tools/convert_to_hf.py").main(["--load", run["ckpt"], "--output", str(tmp_path / "hf")]) == 0
    from est_megatron.data import build_corpus_sets
    sets = build_corpus_sets(list(run["prefixes"].values()), 32, 1234, None, "valid")
    for result, name, dataset in zip(report["corpora"], sets.names, sets.datasets):
        assert result["name"] == name
        corpus_tokens = Corpus(run["prefixes"][name]).num_tokens
        # one epoch: every token but the first and a final partial window is predicted, none twice
        assert result["tokens"] == result["samples"] * 32 and corpus_tokens - 33 < result["tokens"] < corpus_tokens
        labels = collections.Counter(np.concatenate([dataset[i][1:] for i in range(len(dataset))]).tolist())
        every = collections.Counter(np.concatenate([dataset.corpus.tokens(d) for d in range(len(dataset.corpus))])
                                    .tolist())
        assert not labels - every
        total, count = _hf_losses(tmp_path / "hf", dataset)
        assert count == result["tokens"]
        assert result["loss"] == pytest.approx(total / count, rel=1e-5)
        assert result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
        raw_bytes = sum(len(t.encode("utf-8")) for t in run["texts"][name])
        # bytes: the raw text's, exactly (special tokens count none)
        assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2) * corpus_tokens / raw_bytes,
                                                        rel=1e-12)

    # --samples eval_iters x global batch scores exactly what the run's last validation scored
    out = tmp_path / "val.json"
    assert evaluate.main(["--load", run["ckpt"], "--data-path", *run["prefixes"].values(), "--samples", "8",
                          "--output", str(out), "--no-progress"]) == 0
    logged = [r for r in run["records"] if "val_loss" in r][-1]["val_loss_by_corpus"]
    for result in json.loads(out.read_text())["perplexity"]["corpora"]:
        assert result["loss"] == pytest.approx(logged[result["name"]], rel=1e-5)


def test_perplexity_errors_are_one_line(run, tmp_path, capsys):
    for argv, message in ((["--load", str(tmp_path / "none")], "is not a directory"),
                          (["--load", run["ckpt"], "--seq-length", "4096"], "exceeds the model's"),
                          (["--load", run["ckpt"], "--samples", "0"], "--samples must be positive")):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(argv + ["--data-path", run["prefixes"]["heldout_code"], "--no-progress"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


def _loglikelihood(model, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]
    positions = range(len(context) - 1, ids.shape[1] - 1)
    return sum(float(logprobs[p, ids[0, p + 1]]) for p in positions)


def test_lm_eval_runs_local_tasks_end_to_end(run, tmp_path):
    out = tmp_path / "lm_eval.json"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "tools/evaluate.py", "--load", run["ckpt"], "--include-path", TASKS,
                             "--tasks", "tiny_choice,tiny_rolling", "--output", str(out), "--batch-size", "4"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "cache only" in result.stdout  # HF_DATASETS_OFFLINE=1 was honoured, no Hub probe
    table = {(r["task"], r["metric"]): r for r in json.loads(out.read_text())["lm_eval"]["table"]}
    assert set(table) == {("tiny_choice", "acc"), ("tiny_choice", "acc_norm"), ("tiny_rolling", "word_perplexity"),
                          ("tiny_rolling", "byte_perplexity"), ("tiny_rolling", "bits_per_byte")}
    assert table[("tiny_choice", "acc")]["stderr"] > 0
    for task, metric in table:
        assert f"{task} " in result.stdout and f" {metric} " in result.stdout

    # the same numbers from our own model: sentencepiece tokens, no BOS added (the shards have none), BOS as the
    # context of a rolling document, as lm-eval's HFLM defines them
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=run["tokenizer"])
    model_cfg, state = load_est_weights(run["ckpt"])
    model = Transformer(model_cfg).eval()
    model.load_state_dict(state)
    correct = []
    with open(os.path.join(TASKS, "tiny_choice.jsonl")) as f:
        for doc in map(json.loads, f):
            context = sp.encode(doc["question"])
            scores = [_loglikelihood(model, context, sp.encode(f"{doc['question']} {c}")[len(context):])
                      for c in doc["choices"]]
            correct.append(int(np.argmax(scores)) == doc["label"])
    assert table[("tiny_choice", "acc")]["value"] == pytest.approx(np.mean(correct))
    nll, size = 0.0, 0
    with open(os.path.join(TASKS, "tiny_rolling.jsonl")) as f:
        for doc in map(json.loads, f):
            nll -= _loglikelihood(model, [sp.bos_id()], sp.encode(doc["text"]))
            size += len(doc["text"].encode("utf-8"))
    assert table[("tiny_rolling", "bits_per_byte")]["value"] == pytest.approx(nll / size / math.log(2), rel=1e-4)


def test_training_data_flags_conflict_in_one_line(tiny_shards):  # noqa: F811
    from est_megatron.errors import UsageError
    from est_megatron.training.arguments import parse_args
    base = ["--tokenizer-model", tiny_shards["tokenizer"], "--valid-data-path", tiny_shards["prefix"]]
    with pytest.raises(UsageError, match="--data-path and --train-data-path both name training data"):
        parse_args(base + ["--data-path", tiny_shards["prefix"], "--train-data-path", tiny_shards["prefix"]])
    with pytest.raises(UsageError, match="--data-path is required"):
        parse_args(base)
    args = parse_args(base + ["--train-data-path", tiny_shards["prefix"]])
    assert args.train_data_path == [tiny_shards["prefix"]] and args.data_path is None
