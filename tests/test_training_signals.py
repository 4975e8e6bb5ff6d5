"""SIGTERM mid-run: the step in flight finishes, a complete checkpoint is saved, the exit status is 0, and a run
with --load continues from it."""
import json
import signal
import time

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401


def test_sigterm_saves_and_resumes(tiny_shards, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    flags = train_flags(tiny_shards, tmp_path, zero=2, steps=5000,
                        **{"--save": str(ckpt), "--save-interval": "100000", "--est-schedule": "tinyllama"})
    proc = launch(flags, popen=True)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and metrics.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-4000:]
    assert "stopping on SIGTERM" in out + err and "Traceback" not in err

    tag = (ckpt / "latest").read_text()
    with open(ckpt / tag / "est_state.json") as f:
        state = json.load(f)
    stopped = state["step"]
    assert 1 <= stopped < 5000 and state["consumed_samples"] == 8 * stopped
    assert (ckpt / tag / "mp_rank_00_model_states.pt").exists()

    resumed = launch(train_flags(tiny_shards, tmp_path, zero=2, steps=5000,
                                 **{"--load": str(ckpt), "--exit-interval": "1", "--est-schedule": "tinyllama"}))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"resumed from {ckpt} at step {stopped}" in resumed.stdout
    records = [r for r in read_metrics(tmp_path / "logs") if "loss" in r and "event" not in r]
    assert records[-1]["step"] == stopped + 1 and len(train_losses(records)) == stopped + 1
