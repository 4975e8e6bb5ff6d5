"""RAPTR's stage transition seen in the training logs: the loss does not jump when the sampled depth grows.

The real loop (launch/pretrain_tinyllama.py, one process) trains the tiny Llama for 24 steps on a tiny,
repetitive corpus with `--method raptr --raptr-schedule 3,4:0.5,1`, one layer stratum and lr 1e-2: steps 0-11
train the first and last layer and one of the two middle layers drawn at random, steps 12-23 the whole model.

Why `loss(after) <= 1.5 * loss(before)`: RAPTR's premise (Panigrahi et al. 2024) is that a network trained on
random layer subsets is already a good full network, because every middle layer was trained as an optional
residual block; switching to full depth adds residual updates the other layers are used to, so the loss moves by
about its step-to-step noise (here ~5-15% per step while the corpus is learnt, at lr 1e-2). 1.5x leaves room for
that noise. A transition that breaks the trained function sends the loss back toward the untrained ln(vocab)
~ 5.9; the test also requires the pre-transition loss to be below half the first step's, so 1.5x of it stays
well below the untrained level and such a jump fails.
"""
import random

import pytest

from data_fixtures import load_tool, write_jsonl
from dist_utils import launch, read_metrics, tiny_shards, train_flags  # noqa: F401

STEPS, TRANSITION = 24, 12


@pytest.fixture(scope="module")
def repetitive_shards(tiny_shards, tmp_path_factory):  # noqa: F811
    """Documents that repeat one short sentence, tokenized with the tiny tokenizer of `tiny_shards`."""
    root = tmp_path_factory.mktemp("repetitive")
    rng = random.Random(3)
    sentence = "the model learns tokens from text while data flows through shards"
    raw = write_jsonl(str(root / "docs.jsonl"),
                      [{"text": "\n".join([sentence] * rng.randint(5, 20))} for _ in range(200)])
    load_tool("tools/preprocess_data.py").main(
        ["--input", raw, "--format", "jsonl", "--tokenizer-model", tiny_shards["tokenizer"],
         "--output-prefix", str(root / "shards" / "rep"), "--no-progress"])
    return {"tokenizer": tiny_shards["tokenizer"], "prefix": str(root / "shards" / "rep")}


def test_raptr_loss_is_stable_across_the_stage_transition(repetitive_shards, tmp_path):
    flags = train_flags(repetitive_shards, tmp_path, zero=1, steps=STEPS, **{
        "--method": "raptr", "--raptr-schedule": "3,4:0.5,1", "--est-layer-strata": "1", "--seq-length": "16",
        "--lr": "1e-2", "--lr-decay-style": "constant", "--log-interval": "1", "--eval-interval": "1000",
        "--eval-iters": "0"})
    result = launch(flags, nproc=1)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    records = read_metrics(tmp_path / "logs")
    transitions = [r for r in records if r.get("event") == "stage_transition"]
    assert [(t["step"], t["stage"], t["rates"]) for t in transitions] == [(TRANSITION, 2, [1.0, 1.0, 1.0])]
    loss = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    assert sorted(loss) == list(range(1, STEPS + 1))  # logged every step (--log-interval 1)
    # record "step" s is the loss of training step s - 1: step 12 is the last 3-layer step, 13 the first full one
    assert {r["step"]: r["p_layers"] for r in records if "loss" in r}[TRANSITION] == 0.75
    before, after = loss[TRANSITION], loss[TRANSITION + 1]
    assert before < 0.5 * loss[1]  # the corpus is being learnt, so a broken transition would show
    assert after <= 1.5 * before, (before, after)
