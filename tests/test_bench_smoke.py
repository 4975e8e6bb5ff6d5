"""The speed benchmarks run end to end in a smoke mode (tiny preset, 16 tokens, one repetition), so they cannot rot."""
import importlib.util
import json
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench")


@pytest.fixture(autouse=True)
def keep_threads():
    """The smoke runs pass --threads 1 (fast and steady on a loaded machine); give the rest of the suite torch's."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_speed_smoke(tmp_path, capsys):
    path = tmp_path / "step.json"
    load("step_speed").main(["--model", "tiny", "--seq-length", "16", "--micro-batch-size", "2", "--reps", "1",
                             "--warmup", "0", "--threads", "1", "--no-est-machinery", "--modules",
                             "--module-batch-sizes", "1,2", "--json", str(path)])
    out = json.loads(path.read_text())
    assert set(out["stages"]) == {"stage1", "stage2"}
    for stage in out["stages"].values():
        for key in ("speedup", "ideal_speedup", "efficiency", "peak_memory_ratio", "step_time_s", "tokens_per_s"):
            assert stage[key] > 0, key
        assert stage["efficiency"] == pytest.approx(stage["speedup"] / stage["ideal_speedup"])
    assert out["stages"]["stage1"]["ideal_speedup"] > out["stages"]["stage2"]["ideal_speedup"] > 1
    assert out["steady_steps"] == 1000  # the sparse step is timed with fresh and with advanced counts
    assert all(e["optimizer_vs_adamw"] > 0 and e["steady_optimizer_vs_adamw"] > 0
               for e in [out["dense"], *out["stages"].values()])
    assert out["dense"]["peak_memory_ratio"] == 1.0 and out["dense_plan_none"]["step_time_s"] > 0
    assert [row["micro_batch_size"] for row in out["modules"]] == [1, 2]
    assert all(row[m]["est_ms"] > 0 for row in out["modules"] for m in ("mha", "mlp", "layer"))
    assert "stage1" in capsys.readouterr().out


def test_step_speed_rejects_bad_input(capsys):
    with pytest.raises(SystemExit) as exc:
        load("step_speed").main(["--model", "tiny", "--seq-length", "999"])
    assert exc.value.code == 2 and "--seq-length" in capsys.readouterr().err


def test_schedule_speed_smoke(tmp_path):
    path = tmp_path / "schedule.json"
    load("schedule_speed").main(["--model", "tiny", "--seq-length", "16", "--micro-batch-size", "2",
                                 "--train-steps", "6", "--warmup", "0", "--threads", "1", "--json", str(path)])
    out = json.loads(path.read_text())
    assert out["train_steps"] == 6 and [s["steps"] for s in out["stages"]] == [1, 1, 4]
    assert 0 < out["flops_saving"] < 1 and out["est_time_s"] > 0 and out["dense_time_s"] > 0
    assert out["saving_ratio"] == pytest.approx(out["measured_saving"] / out["flops_saving"])


def test_sat_importance_smoke(tmp_path):
    path = tmp_path / "sat.json"
    out = load("sat_importance").main(["--model", "tiny", "--seq-length", "16", "--micro-batch-size", "2",
                                       "--reps", "1", "--warmup", "0", "--accumulation", "4", "--json", str(path)])
    assert json.loads(path.read_text()) == out
    assert out["importance_s"] > 0 and out["step_s"] > 0
    assert out["share_per_optimizer_step"] == pytest.approx(
        out["importance_s"] / (out["importance_s"] + 4 * out["step_s"]))
    assert 0 < out["flops_ratio_per_micro_batch"] < 1


def test_loss_memory_smoke(tmp_path):
    path = tmp_path / "loss.json"
    assert load("loss_memory").main(["--tokens", "256", "--hidden-size", "32", "--vocab-size", "500", "--device",
                                     "cpu", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert set(out["peaks"]) == {"whole", "chunked"} and out["logits_and_grad"] == 2 * 256 * 500 * 4
