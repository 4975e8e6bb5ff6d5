"""Tiny corpora and a tiny tokenizer shared by the data tests (imported, not a conftest, by design)."""
import importlib.util
import json
import os
import random

import pytest
import zstandard

from est_megatron.data.tokenizer import train_llama_style

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the model learns tokens from text while data flows through shards and every layer grows "
         "subnetworks evolve over time 0123 4567 89 alpha beta gamma delta print return def class").split()
SETS = ("RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia", "RedPajamaBook")


def load_tool(relpath):
    """Import a tools/ script as a module so tests can call its main(argv) in-process."""
    path = os.path.join(REPO, relpath)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_text(rng, n_words):
    lines, words = [], []
    for _ in range(n_words):
        words.append(rng.choice(WORDS))
        if rng.random() < 0.1:
            lines.append(" ".join(words))
            words = []
    lines.append(" ".join(words))
    return "\n".join(lines)


def slimpajama_records(n, seed=0):
    rng = random.Random(seed)
    return [{"text": make_text(rng, rng.randint(5, 120)) if i % 17 else "",
             "meta": {"redpajama_set_name": SETS[i % len(SETS)]}} for i in range(n)]


def write_jsonl(path, records, compress=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(data) if compress else data)
    return path


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory):
    rng = random.Random(1)
    lines = [make_text(rng, 30) for _ in range(2000)]
    return train_llama_style(lines, str(tmp_path_factory.mktemp("tok") / "tiny"), 400)


@pytest.fixture
def slimpajama_tree(tmp_path):
    """Two chunks of a SlimPajama-like tree: one .jsonl.zst and one plain .jsonl (with empty texts)."""
    root = tmp_path / "slim"
    write_jsonl(str(root / "chunk1" / "example_train_0.jsonl.zst"), slimpajama_records(300, seed=2), compress=True)
    write_jsonl(str(root / "chunk2" / "example_train_1.jsonl"), slimpajama_records(200, seed=3))
    return str(root)
