"""Faults injected as a cluster user meets them: preemption of the whole process group, damaged and planted
files, unwritable directories, divergence, and resumes that do not fit the checkpoint. Each ends in one saved
checkpoint and exit 0 (preemption) or in one `error:` line before any harm (everything else)."""
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from data_fixtures import load_tool
from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401
from est_megatron.checkpoint.checksums import damaged_file, write_checksums
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.errors import UsageError


def error_lines(result):
    return [line for line in result.stderr.splitlines() if "error: " in line]


def assert_refused(result, *fragments):
    """A non-zero exit and the same single `error:` line on every rank, no traceback from a rank (torchrun
    prints its own when a worker fails, so: no traceback through our code)."""
    assert result.returncode != 0, (result.stdout + result.stderr)[-3000:]
    lines = {line[line.index("error: "):] for line in error_lines(result)}
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines.pop()
    assert all(f in line for f in fragments), line
    assert not re.search(r'File ".*/(est_megatron|launch)/', result.stderr), result.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory):  # noqa: F811
    """One process, 4 steps saved every step with --keep-checkpoints 2: step_000003 and step_000004 remain."""
    work = tmp_path_factory.mktemp("trained")
    result = launch(train_flags(tiny_shards, work, steps=4, **{"--save": str(work / "ckpt"), "--save-interval": "1",
                                                               "--keep-checkpoints": "2"}))
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_checkpoints_are_pruned_and_verified_and_lr_follows_the_schedule(trained):
    ckpt = trained / "ckpt"
    assert sorted(n for n in os.listdir(ckpt) if n.startswith("step_")) == ["step_000003", "step_000004"]
    assert (ckpt / "latest").read_text() == "step_000004"
    assert damaged_file(str(ckpt / "step_000004")) is None
    assert not any(n.endswith(".pt") and n.startswith("rng") for n in os.listdir(ckpt / "step_000004"))
    # warm-up of 1 step to 3e-3, then cosine to 3e-4 at step 4 (Megatron's schedule), step s using index s - 1
    import math
    expected = [3e-3] + [3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + math.cos(math.pi * (i - 1) / 3)) for i in (1, 2, 3)]
    records = [r for r in read_metrics(trained / "logs") if "loss" in r and "event" not in r]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-6)
    assert all(r["skipped_steps"] == 0 for r in records)


def test_group_sigterm_under_torchrun_with_a_dataloader_worker_then_exact_resume(tiny_shards, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    common = {"--est-schedule": "tinyllama"}
    flags = train_flags(tiny_shards, tmp_path, steps=5000, **common, **{"--save": str(ckpt),
                                                                       "--save-interval": "100000"})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    from dist_utils import REPO, SCRIPT, free_port
    proc = subprocess.Popen([__import__("sys").executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), SCRIPT] + flags, env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and \
            not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # what scancel does: torchrun, both workers and their DataLoader workers
    out, err = proc.communicate(timeout=600)
    assert "stopping on SIGTERM (checkpoint saved)" in out + err, (out + err)[-4000:]
    # torchrun reports the signal with a traceback of its own; the workers must have none, nor lost a worker
    assert not re.search(r'File ".*/(est_megatron|launch|torch/utils/data)/', err) and "killed by signal" not in err, \
        err[-4000:]
    stopped = json.loads((ckpt / (ckpt / "latest").read_text() / "est_state.json").read_text())["step"]
    assert stopped >= 2 and damaged_file(str(ckpt / (ckpt / "latest").read_text())) is None

    resumed = launch(train_flags(tiny_shards, tmp_path, steps=5000, **common,
                                 **{"--load": str(ckpt), "--exit-interval": "1"}), nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {ckpt} at step {stopped}" in resumed.stdout
    reference = tmp_path / "reference"
    straight = launch(train_flags(tiny_shards, reference, steps=5000, **common,
                                  **{"--exit-interval": str(stopped + 1)}), nproc=2)
    assert straight.returncode == 0, straight.stderr[-4000:]
    records = [r for r in read_metrics(tmp_path / "logs") if "loss" in r and "event" not in r]
    expected = [r for r in read_metrics(reference / "logs") if "loss" in r and "event" not in r]
    assert [r["step"] for r in records] == list(range(1, stopped + 2))
    assert [(r["loss"], r["lr"]) for r in records] == [(r["loss"], r["lr"]) for r in expected]


def test_workers_save_and_stop_when_their_launcher_dies(tiny_shards, tmp_path):  # noqa: F811
    """SIGUSR1 kills torchrun outright (like SIGTERM kills the `deepspeed` command) without reaching the workers:
    they notice the launcher is gone, save and exit instead of training on as orphans."""
    ckpt = tmp_path / "ckpt"
    proc = launch(train_flags(tiny_shards, tmp_path, steps=5000, **{"--save": str(ckpt), "--save-interval": "100000"}),
                  nproc=2, popen=True)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=600)  # the pipes close when the orphaned workers exit too
    # rank 0 names the launcher's exit, or (when rank 1 noticed it first) the stop request it received
    assert re.search(r"stopping on (the exit of its launcher|a stop request on a peer rank) \(checkpoint saved\)",
                     out + err), (out + err)[-4000:]
    tag = (ckpt / "latest").read_text()
    assert damaged_file(str(ckpt / tag)) is None


class Planted:
    """Unpickling this creates a directory: proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_planted_pickles_are_never_executed(trained, tmp_path):
    marker = str(tmp_path / "code_ran")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    torch.save({"module": {"embed.weight": torch.zeros(1)}, "payload": Planted(marker)},
               ckpt / "step_000004" / "mp_rank_00_model_states.pt")
    write_checksums(str(ckpt / "step_000004"))  # a forger can update the checksums: still never unpickled
    with pytest.raises(UsageError, match="mp_rank_00_model_states.pt holds objects other than tensors"):
        load_est_weights(str(ckpt))  # what --init-from reads
    result = subprocess.run([__import__("sys").executable, "tools/convert_to_hf.py", "--load", str(ckpt),
                             "--output", str(tmp_path / "hf")], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2 and "holds objects other than tensors" in result.stderr, result.stderr[-2000:]

    hf_dir = tmp_path / "hf_in"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
                                                    "intermediate_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "max_position_embeddings": 32}))
    torch.save({"model.embed_tokens.weight": torch.zeros(32, 16), "x": Planted(marker)}, hf_dir / "pytorch_model.bin")
    with pytest.raises(SystemExit):
        load_tool("tools/convert_hf_to_est.py").main(["--hf-dir", str(hf_dir), "--save", str(tmp_path / "ours")])
    assert not os.path.exists(marker)


def test_planted_rng_state_is_refused_without_running(trained, tiny_shards, tmp_path):  # noqa: F811
    marker = str(tmp_path / "code_ran")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    tag = ckpt / "step_000004"
    (tag / "rng_state_rank00000.json").write_bytes(pickle.dumps(Planted(marker)))
    write_checksums(str(tag))  # a forger can update the checksums: the file must still never be unpickled
    result = launch(train_flags(tiny_shards, tmp_path, steps=6, **{"--load": str(ckpt),
                                                                   "--override-resume-args": "train-steps"}))
    assert_refused(result, "rng_state_rank00000.json", "--no-load-rng")
    assert not os.path.exists(marker)


def test_corrupted_model_file_is_named_and_the_previous_checkpoint_offered(trained, tiny_shards, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    with open(ckpt / "step_000004" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.seek(1024)
        f.write(os.urandom(4096))
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **{"--load": str(ckpt)}))
    assert_refused(result, "mp_rank_00_model_states.pt does not match its checksum", "step_000003")


def test_tools_refuse_a_damaged_checkpoint(trained, tiny_shards, tmp_path, capsys):  # noqa: F811
    """Readers outside training verify the checksums as --load does: damaged weights are neither exported nor
    evaluated (before, convert_to_hf wrote garbage and hessian_trace printed nan, both with exit 0)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    with open(ckpt / "step_000004" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.seek(1024)
        f.write(os.urandom(4096))
    runs = {"tools/convert_to_hf.py": ["--output", str(tmp_path / "hf")],
            "tools/hessian_trace.py": ["--data-path", tiny_shards["prefix"], "--seq-length", "16", "--batches", "1",
                                       "--probes", "2", "--device", "cpu", "--output", str(tmp_path / "h.json")],
            "tools/evaluate.py": ["--data-path", tiny_shards["prefix"], "--device", "cpu",
                                  "--output", str(tmp_path / "e.json")]}
    for tool, flags in runs.items():
        with pytest.raises(SystemExit) as exit_info:
            load_tool(tool).main(["--load", str(ckpt)] + flags)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert exit_info.value.code == 2 and len(lines) == 1, tool
        assert "mp_rank_00_model_states.pt does not match its checksum" in lines[0], lines[0]
        assert str(ckpt / "step_000003") in lines[0], lines[0]
    assert not (tmp_path / "hf").exists() and not (tmp_path / "h.json").exists()
    assert load_est_weights(str(ckpt / "step_000003"))[1]  # the previous checkpoint it offers is intact


@pytest.mark.parametrize("flag", ["--save", "--log-dir"])
def test_unwritable_directory_fails_before_step_one(flag, tiny_shards, tmp_path):  # noqa: F811
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    overrides = {flag: str(blocker)}
    if flag == "--log-dir":
        overrides["--save"] = str(tmp_path / "ckpt")
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **overrides))
    assert_refused(result, f"{flag} {blocker} is a file")
    assert "step       1/" not in result.stdout
    assert not (tmp_path / "ckpt").exists() or not os.listdir(tmp_path / "ckpt")


def test_divergence_stops_with_skips_logged_and_a_finite_checkpoint_kept(tiny_shards, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    result = launch(train_flags(tiny_shards, tmp_path, steps=40, **{
        "--lr": "1e4", "--min-lr": "1", "--clip-grad": "0", "--save": str(ckpt), "--save-interval": "1",
        "--keep-checkpoints": "1", "--max-skipped-steps": "2"}))
    assert_refused(result, "2 consecutive steps skipped", "--max-skipped-steps")
    records = read_metrics(tmp_path / "logs")
    stopped = [r for r in records if r.get("event") == "stopped"]
    assert stopped and stopped[0]["consecutive"] == 2 and stopped[0]["skipped_steps"] >= 2
    skipped_at = [int(line.split()[1].rstrip(":")) for line in result.stdout.splitlines()
                  if line.startswith("step ") and ": skipped" in line]
    assert len(skipped_at) == stopped[0]["skipped_steps"]
    tags = [n for n in os.listdir(ckpt) if n.startswith("step_")]
    assert len(tags) == 1 and (ckpt / "latest").read_text() == tags[0]
    step = int(tags[0].split("_")[1])
    assert step not in skipped_at and step < stopped[0]["step"]
    assert damaged_file(str(ckpt / tags[0])) is None
    weights = torch.load(ckpt / tags[0] / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_resume_refuses_a_changed_flag(trained, tiny_shards, tmp_path):  # noqa: F811
    """The launcher refuses a resume with another --seed in one line naming both values and the override."""
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **{"--seed": "7", "--load": str(trained / "ckpt")}))
    assert_refused(result, "was trained with", "--seed 1234", "--seed 7", "--override-resume-args seed")


@pytest.mark.parametrize("change, fragments", [
    ({"--est-schedule": "dense"}, ("--est-schedule",)),
    ({"--method": "dense"}, ("--method est", "--method dense")),
    ({"--seq-length": "16"}, ("--seq-length 32", "--seq-length 16")),
    ({"--data-path": "weighted"}, ("--data-path",)),
], ids=["schedule", "method", "seq-length", "data-blend"])
def test_resume_check_names_each_changed_flag(change, fragments, trained, tiny_shards, tmp_path):  # noqa: F811
    """The check the launcher runs above (resume.check_resume), on the run state the trained checkpoint holds and
    the parsed flags of a resume that changes one more flag each."""
    from est_megatron.checkpoint.state import read_state
    from est_megatron.training.arguments import parse_args
    from est_megatron.training.resume import check_resume
    if change.get("--data-path") == "weighted":  # the same corpus as a one-entry blend: another blend spec
        change = {"--data-path": f"1 {tiny_shards['prefix']}"}
    saved = read_state(str(trained / "ckpt" / "step_000004"))
    args = parse_args(train_flags(tiny_shards, tmp_path, steps=4, **change, **{"--load": str(trained / "ckpt")}))
    with pytest.raises(UsageError, match="was trained with") as refused:
        check_resume(args, saved, saved["tokenizer_sha256"], saved["layout"], "step_000004")
    assert all(f in str(refused.value) for f in fragments), refused.value


def test_resume_refuses_a_checkpoint_of_another_sample_order(trained, tiny_shards, tmp_path):  # noqa: F811
    """A checkpoint records the version of the sample order it trained on (one without it predates version 2);
    resuming it under another order is refused unless accepted, as a changed flag is."""
    from est_megatron.checkpoint.state import read_state
    from est_megatron.data.gpt_dataset import INDEX_VERSION
    from est_megatron.training.arguments import parse_args
    from est_megatron.training.resume import check_resume
    saved = read_state(str(trained / "ckpt" / "step_000004"))
    assert saved["data_order"] == INDEX_VERSION
    old = {k: v for k, v in saved.items() if k != "data_order"}
    args = parse_args(train_flags(tiny_shards, tmp_path, steps=4, **{"--load": str(trained / "ckpt")}))
    check_resume(args, saved, saved["tokenizer_sha256"], saved["layout"], "step_000004", INDEX_VERSION)
    check_resume(args, old, saved["tokenizer_sha256"], saved["layout"], "step_000004", None)  # SFT: not checked
    with pytest.raises(UsageError, match="trained on sample order 1") as refused:
        check_resume(args, old, saved["tokenizer_sha256"], saved["layout"], "step_000004", INDEX_VERSION)
    assert "--override-resume-args data-order" in str(refused.value)
    args.override_resume_args = ["data-order"]
    check_resume(args, old, saved["tokenizer_sha256"], saved["layout"], "step_000004", INDEX_VERSION)


def test_resume_override_accepts_the_named_change(trained, tiny_shards, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "ckpt", ckpt)
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **{
        "--load": str(ckpt), "--seed": "7", "--override-resume-args": "seed"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {ckpt} at step 4" in result.stdout


def test_resume_on_another_world_size_names_init_from(trained, tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **{"--load": str(trained / "ckpt")}), nproc=2)
    assert_refused(result, "world size 1", "world size 2", "--init-from")


def test_shards_of_another_tokenizer_are_refused(tiny_shards, tmp_path):  # noqa: F811
    from data_fixtures import make_text
    import random
    rng = random.Random(3)
    lines = [make_text(rng, 30) for _ in range(500)]
    from est_megatron.data.tokenizer import train_llama_style
    other = train_llama_style(lines, str(tmp_path / "other"), 296)
    result = launch(train_flags(tiny_shards, tmp_path, steps=2, **{"--tokenizer-model": other}))
    assert_refused(result, tiny_shards["prefix"], "another tokenizer", "re-run tools/preprocess_data.py")

    raw = tmp_path / "raw_00000"  # shards of another tool: no manifest, ids up to 299
    for ext in (".bin", ".idx"):
        shutil.copyfile(tiny_shards["prefix"] + "_00000" + ext, str(raw) + ext)
    result = launch(train_flags(tiny_shards, tmp_path, steps=2, **{"--tokenizer-model": other,
                                                                   "--data-path": str(raw)}))
    assert_refused(result, "holds token id 29", "has only 2")
