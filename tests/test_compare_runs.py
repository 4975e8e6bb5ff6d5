"""The experiment harness end to end in smoke mode (dense and EST, 8 steps, one process each): an interrupted
first invocation (--exit-interval 4), a second that resumes both runs from their checkpoints, a third that skips
them; its summary, Figure 2 and table. tools/plot_metrics.py on the same logs, and the log reader on its own."""
import contextlib
import io
import json
import os
import shutil
import sys

import pytest

from data_fixtures import load_tool
from dist_utils import tiny_shards  # noqa: F401

from est_megatron.analysis.curves import DENSE_STEPS, FLOPS, load_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_harness(argv):
    """tools/compare_runs.py main in this process; returns (result, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = load_tool("tools/compare_runs.py").main(argv)
    return result, out.getvalue()


@pytest.fixture(scope="module")
def harness(tiny_shards, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("compare")
    argv = ["--smoke", "--output-dir", str(root / "out"), "--run", "dense", "--run", "est", "--seeds", "3",
            "--data-path", tiny_shards["prefix"], "--tokenizer-model", tiny_shards["tokenizer"],
            "--table-steps", "4"]
    stopped, _ = run_harness(argv + ["--exit-interval", "4"])
    attempts_after_stop = {name: json.loads((root / "out" / name / "seed_3" / "run.json").read_text())["attempts"]
                           for name in ("dense", "est")}
    resumed, resumed_out = run_harness(argv)
    skipped, skipped_out = run_harness(argv)
    return dict(root=root, out=root / "out", argv=argv, stopped=stopped, attempts_after_stop=attempts_after_stop,
                resumed=resumed, resumed_out=resumed_out, skipped=skipped, skipped_out=skipped_out)


def _runs(summary):
    return {run["name"]: run for run in summary["runs"]}


def test_interrupted_runs_resume_and_finished_runs_are_skipped(harness):
    stopped = _runs(harness["stopped"])
    for name in ("dense", "est"):
        seed = stopped[name]["seeds"][0]
        assert seed["status"] == "incomplete" and seed["last_step"] == 4, seed["status"]
        assert [a["to_step"] for a in harness["attempts_after_stop"][name]] == [4]

    resumed = _runs(harness["resumed"])
    for name in ("dense", "est"):
        seed = resumed[name]["seeds"][0]
        assert seed["status"] == "finished" and seed["last_step"] == 8
        state = json.loads((harness["out"] / name / "seed_3" / "run.json").read_text())
        assert [(a["from_step"], a["to_step"]) for a in state["attempts"]] == [(0, 4), (4, 8)]
        log = (harness["out"] / name / "seed_3" / "train.log").read_text()
        assert "resumed from" in log and "at step 4" in log
        assert seed["train"]["step"] == list(range(1, 9))  # each step once, across both attempts
    assert "resuming at step 4 of 8" in harness["resumed_out"]

    assert "dense seed 3 is finished; skipped" in harness["skipped_out"]
    assert "est seed 3 is finished; skipped" in harness["skipped_out"]
    assert "0 of 2 runs to train" in harness["skipped_out"]
    for name in ("dense", "est"):  # no third attempt
        state = json.loads((harness["out"] / name / "seed_3" / "run.json").read_text())
        assert len(state["attempts"]) == 2
    assert _runs(harness["skipped"])["est"]["final_val_loss_mean"] == resumed["est"]["final_val_loss_mean"]


def test_summary_has_curves_flops_and_the_comparison(harness):
    summary = json.loads((harness["out"] / "summary.json").read_text())
    assert summary["baseline"] == "dense" and summary["seeds"] == [3]
    runs = _runs(summary)
    dense, est = runs["dense"]["seeds"][0], runs["est"]["seeds"][0]
    for seed in (dense, est):
        assert seed["val"]["step"] == [4, 8] and seed["final_val_step"] == 8
        assert seed["tokens"] == 8 * 4 * 32 and seed["train"]["tokens"][0] == 4 * 32
        flops = seed["train"]["flops"]
        assert all(b > a > 0 for a, b in zip(flops, flops[1:]))
        assert seed["wall_clock_s"] > 0 and seed["train_time_s"] > 0
    assert dense["flops"] == dense["dense_flops"] and dense["flops_saved_frac"] == 0
    assert est["flops"] < dense["flops"] and 0 < est["flops_saved_frac"] < 1
    assert est["flops"] == pytest.approx(dense["flops"] * (1 - est["flops_saved_frac"]))
    # the tinyllama schedule over 8 steps: stages end after steps 1 and 3
    assert [t["step"] for t in est["stage_transitions"]] == [1, 3] and dense["stage_transitions"] == []
    relative = (est["final_val_loss"] / dense["final_val_loss"] - 1) * 100
    assert runs["est"]["val_loss_vs_baseline_pct_mean"] == pytest.approx(relative)
    assert runs["dense"]["val_loss_vs_baseline_pct_mean"] is None
    assert runs["est"]["val_loss_at_4_mean"] == est["val"]["loss"][0]


def test_table_and_figure_written(harness):
    table = (harness["out"] / "table.md").read_text()
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| run"))
    assert header.split(" | ")[3:7] == ["val loss", "val loss @4", "vs dense", "FLOPs saved"]
    est_row = next(line for line in lines if line.startswith("| est |")).split(" | ")
    est = _runs(harness["resumed"])["est"]
    assert est_row[3] == f"{est['final_val_loss_mean']:.4f}"
    assert est_row[5] == f"{est['val_loss_vs_baseline_pct_mean']:+.2f}%"
    assert est_row[6] == f"{est['flops_saved_frac_mean'] * 100:.1f}%"
    assert table in harness["skipped_out"]  # printed too
    png = harness["out"] / "figure2.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000


@pytest.mark.parametrize("extra, message", [
    (["--seed", "5"], "--seed is set by compare_runs (use --seeds)"),
    (["--lr-typo", "1"], "unrecognized arguments: --lr-typo 1"),
    (["--run", "est:--est-schedule", "gpt2"], "quote each run's flags as one word"),
    (["--run", "bogus"], "--run 'bogus' is not a method"),
    (["--run", "est:--est-schedule nope"], "unknown schedule 'nope'"),
    (["--lr", "1e-3"], "was started with other flags (lr 0.003 -> 0.001)"),
])
def test_bad_input_is_one_clear_line(harness, capsys, extra, message):
    argv = [a for a in harness["argv"] if a not in ("--run", "dense", "est")] if "--run" in extra else \
        harness["argv"]
    with pytest.raises(SystemExit) as exc:
        run_harness(argv + extra + ["--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1] and err[-1].startswith("error: ")


def test_report_only_redraws_from_the_logs(harness, tmp_path):
    argv = [a if a != str(harness["out"]) else str(tmp_path / "copy") for a in harness["argv"]]
    shutil.copytree(harness["out"], tmp_path / "copy")
    (tmp_path / "copy" / "figure2.png").unlink()
    summary, out = run_harness(argv + ["--report-only"])
    assert "runs to train" not in out and (tmp_path / "copy" / "figure2.png").exists()
    for copied, original in zip(summary["runs"], harness["skipped"]["runs"]):
        assert copied["final_val_loss_mean"] == original["final_val_loss_mean"]
        assert copied["seeds"][0]["train"] == original["seeds"][0]["train"]
        assert copied["seeds"][0]["log_dir"].startswith(str(tmp_path / "copy"))


def test_plot_metrics_overlays_logs(harness, tmp_path, capsys):
    out = harness["out"]
    png = tmp_path / "curves.png"
    load_tool("tools/plot_metrics.py").main([f"dense={out / 'dense' / 'seed_3' / 'logs'}",
                                             str(out / "est" / "seed_3" / "logs" / "metrics.jsonl"),
                                             "--output", str(png), "--title", "smoke"])
    assert png.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "dense: " in printed and "est/seed_3: " in printed and "FLOPs saved 0.0%" in printed

    from est_megatron.analysis.figure import loss_figure
    est = load_curves(out / "est" / "seed_3" / "logs")
    dense = load_curves(out / "dense" / "seed_3" / "logs")
    fig = loss_figure({"dense": [dense], "est": [est, est]})
    axes = fig.axes
    assert [ax.get_xlabel() for ax in axes] == ["step", "training FLOPs"] * 2
    assert [ax.get_ylabel() for ax in axes] == ["validation loss"] * 2 + ["training loss"] * 2
    steps_axis = axes[2]
    curves = [line for line in steps_axis.get_lines() if len(line.get_xdata()) > 2]
    assert [list(line.get_xdata()) for line in curves] == [list(range(1, 9))] * 2
    marks = sorted(line.get_xdata()[0] for line in steps_axis.get_lines() if line.get_linestyle() == ":")
    assert marks == [1, 3]
    assert len(steps_axis.collections) == 1  # the two-seed band of est only


def test_plot_metrics_without_matplotlib(monkeypatch, capsys, harness):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        load_tool("tools/plot_metrics.py").main([str(harness["out"] / "est" / "seed_3" / "logs")])
    assert exc.value.code == 2 and "matplotlib is not installed" in capsys.readouterr().err


def test_log_reader_deduplicates_and_derives_flops(tmp_path):
    """A resumed log with steps 3-4 written twice and a torn last line; no FLOPs or token fields (older logs)."""
    records = [{"step": 2, "loss": 5.0, "flops_saved_frac": 0.5, "consumed_samples": 8},
               {"event": "stage_transition", "step": 2, "stage": 2, "rates": [1, 1, 1]},
               {"step": 4, "loss": 4.0, "flops_saved_frac": 0.25, "consumed_samples": 16},
               {"step": 4, "val_loss": 4.5, "val_ppl": 90.0},
               {"step": 4, "loss": 3.9, "flops_saved_frac": 0.25, "consumed_samples": 16},
               {"step": 3, "val_loss": 4.4, "val_ppl": 81.0},
               {"event": "end", "step": 4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')
    curves = load_curves(str(path))
    assert curves.flops_unit == DENSE_STEPS and curves.end_step == 4
    assert curves.train.step == [2, 4] and curves.train.value == [5.0, 3.9]
    assert curves.train.flops == [1.0, 3.0] and curves.train.tokens is None
    assert curves.val.step == [3, 4] and curves.val.flops == [2.0, 3.0]
    assert curves.transitions[0]["flops"] == 1.0
    with_cost = load_curves(str(path), dense_step_flops=100.0, seq_length=32)
    assert with_cost.flops_unit == FLOPS and with_cost.train.flops == [100.0, 300.0]
    assert with_cost.train.tokens == [256, 512] and with_cost.val.tokens == [384, 512]

    path.write_text('{"step": 1, "loss": 5.0}\nnot json\n{"step": 2, "loss": 4.0}\n')
    with pytest.raises(Exception, match="line 2 is not JSON"):
        load_curves(str(path))


def test_demo_data_dry_run(tmp_path, monkeypatch):
    """--demo-data builds the demo corpus (here from a few standard-library files) and trains on its blend with
    the demo's model by default; --dry-run prints the commands and trains nothing."""
    from est_megatron import demo
    root, files = demo.stdlib_files()
    few = [f for f in files if os.path.basename(f) in ("argparse.py", "textwrap.py", "functools.py", "fractions.py")]
    monkeypatch.setattr(demo, "stdlib_files", lambda: (root, few))
    monkeypatch.setattr(demo, "VOCAB", 500)
    result, out = run_harness(["--demo-data", str(tmp_path / "demo"), "--output-dir", str(tmp_path / "out"),
                               "--dry-run", "--run", "dense", "--run", "raptr", "--run", "sat", "--seeds", "1", "2",
                               "--train-steps", "100"])
    assert len(result["jobs"]) == 6 and len(result["pending"]) == 6
    argv = result["jobs"][0]
    assert argv[argv.index("--data-path") + 1] == "0.7" and argv[argv.index("--hidden-size") + 1] == "128"
    last = len(argv) - 1 - argv[::-1].index("--train-steps")
    assert argv[last + 1] == "100" and "240" in argv  # the user's flag comes after the demo's default and wins
    assert "sat seed 2:" in out and not (tmp_path / "out" / "dense").exists()
