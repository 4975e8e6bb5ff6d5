"""tools/inspect_data.py: counts, a document's text and a training sample's text."""
import pytest

from data_fixtures import load_tool, tokenizer_model, write_jsonl  # noqa: F401
from est_megatron.data import build_datasets

TEXTS = ["alpha beta gamma", "the model learns tokens", "print return 0123"]


@pytest.fixture
def shards(tokenizer_model, tmp_path):  # noqa: F811
    write_jsonl(str(tmp_path / "d.jsonl"), [{"text": t} for t in TEXTS * 4])
    load_tool("tools/preprocess_data.py").main(["--input", str(tmp_path / "d.jsonl"), "--tokenizer-model",
                                                tokenizer_model, "--output-prefix", str(tmp_path / "o"),
                                                "--shard-size", "20", "--no-progress"])
    return str(tmp_path / "o")


def test_counts_document_and_sample(shards):
    tool = load_tool("tools/inspect_data.py")
    out = tool.main(["--data-path", shards, "--document", "4"])
    assert out[0].startswith(f"{shards}: ") and "12 documents" in out[0] and "dtype uint16" in out[0]
    assert any("o_00001" in line for line in out)
    assert out[-1] == TEXTS[1] + "<eos>"
    out = tool.main(["--data-path", shards, "--sample", "2", "--seq-length", "12", "--split", "1", "--ids"])
    ids = build_datasets([shards], "1", 12, 1234, (3, 0, 0))[0][2]
    assert out[-1] == f"ids: {ids.tolist()}"
    rendered = out[-2]
    assert "<eos>" in rendered and all(w in " ".join(TEXTS) for w in rendered.replace("<eos>", " ").split())


def test_out_of_range_document_is_a_usage_error(shards, capsys):
    with pytest.raises(SystemExit):
        load_tool("tools/inspect_data.py").main(["--data-path", shards, "--document", "99"])
    assert capsys.readouterr().err == f"error: --document 99 is out of range: {shards} has 12 documents\n"
