"""The experiment harness end to end in smoke mode (dense and EST, 8 steps, one process each): an interrupted
first invocation (--exit-interval 4), a second that resumes both runs at once from their checkpoints (--jobs 2), a
third that skips them; its summary, Figure 2 and table; a stop while two runs train. tools/plot_metrics.py on the
same logs, and the log reader on its own."""
import contextlib
import io
import json
import os
import random
import re
import shutil
import sys

import pytest

from data_fixtures import load_tool
from dist_utils import OTHER_WORDS, corpus, tiny_shards  # noqa: F401

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
    """A blend of two corpora, as the demo's prose and code: validation reports each."""
    root = tmp_path_factory.mktemp("compare")
    rng = random.Random(11)
    other = corpus(root, "other", [" ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(20, 60)))
                                   for _ in range(120)], tiny_shards["tokenizer"])
    blend = ["0.7", tiny_shards["prefix"], "0.3", other]
    argv = ["--smoke", "--output-dir", str(root / "out"), "--run", "dense", "--run", "est", "--seeds", "3",
            "--data-path", *blend, "--tokenizer-model", tiny_shards["tokenizer"], "--table-steps", "4"]
    stopped, _ = run_harness(argv + ["--exit-interval", "4"])
    attempts_after_stop = {name: json.loads((root / "out" / name / "seed_3" / "run.json").read_text())["attempts"]
                           for name in ("dense", "est")}
    resumed, resumed_out = run_harness(argv + ["--jobs", "2"])  # both runs at once
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
    # each corpus of the blend validated apart, the blend's loss their weighted mean
    by_corpus = runs["est"]["val_loss_by_corpus"]
    assert set(by_corpus) == {"docs", "other"}
    assert est["final_val_loss"] == pytest.approx(0.7 * by_corpus["docs"]["mean"] + 0.3 * by_corpus["other"]["mean"])


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
    assert "| run | docs validation loss (vs dense) | other validation loss (vs dense) |" in table
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
    (["--lr-sweep"], "--lr-sweep needs at least one peak learning rate"),
    (["--lr-sweep", "1e-3", "-0.002", "0"], "--lr-sweep rates must be positive, got -0.002 0.0"),
    (["--lr-sweep", "1e-3"], "--split 90,10,0 has no test part"),
    (["--run", "dense", "--equal-flops-dense"], "no run is one; add --run est"),
    (["--equal-flops-dense", "dense"], "--equal-flops-dense dense: not an EST-family run"),
])
def test_bad_input_is_one_clear_line(harness, capsys, extra, message):
    argv = [a for a in harness["argv"] if a not in ("--run", "dense", "est")] if "--run" in extra else \
        harness["argv"]
    with pytest.raises(SystemExit) as exc:
        run_harness(argv + extra + ["--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1] and err[-1].startswith("error: ")


def _last_value(argv, flag):
    """The value of a flag's last occurrence (the one the launcher uses)."""
    return argv[len(argv) - argv[::-1].index(flag)]


def test_equal_flops_dense_and_lr_sweep_plans(harness, tiny_shards):  # noqa: F811
    """The equal-FLOPs dense run gets the finished EST run's measured compute, its cosine ending at its last step;
    a sweep puts every run and rate in its own directory, with a test split the launcher evaluates."""
    from est_megatron.training.data_hooks import split_test_samples
    result, _ = run_harness(harness["argv"] + ["--equal-flops-dense", "--dry-run"])
    est = _runs(harness["skipped"])["est"]["seeds"][0]
    steps = str(round(8 * est["flops"] / est["dense_flops"]))  # 8 x (1 - saved)
    argv = result["jobs"][2]
    assert [_last_value(argv, f) for f in ("--method", "--train-steps", "--lr-decay-steps")] == ["dense", steps, steps]
    assert int(steps) < 8 and result["pending"] == ["dense-at-est-flops seed 3"]

    result, _ = run_harness(harness["argv"] + ["--lr-sweep", "1e-3", "3e-3", "--split", "80,10,10", "--dry-run"])
    log_dirs = [a[a.index("--log-dir") + 1] for a in result["jobs"]]
    assert [os.path.relpath(d, harness["out"]) for d in log_dirs] == [
        os.path.join(name, f"lr_{lr}", "seed_3", "logs") for lr in ("0.001", "0.003") for name in ("dense", "est")]
    assert [_last_value(result["jobs"][0], f) for f in ("--lr", "--min-lr")] == ["0.001", "0.0001"]  # same ratio
    prefix = [tiny_shards["prefix"]]
    assert split_test_samples(prefix, "80,10,10", 4) == 4 and split_test_samples(prefix, "90,10,0", 4) == 0
    assert split_test_samples(prefix, "969,30,1", 4) == 0  # 400 documents: none in the default test part


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


def test_equal_flops_schedule_scales_steps_warmup_and_decay():
    from est_megatron.analysis.equal_flops import equal_flops_schedule
    plan = equal_flops_schedule(1200, 0.163, 60, None, "measured")
    assert (plan.train_steps, plan.warmup_steps, plan.decay_steps) == (1004, 50, 1004)  # the cosine ends at the end
    assert plan.flags() == ["--train-steps", "1004", "--lr-warmup-steps", "50", "--lr-decay-steps", "1004"]
    assert equal_flops_schedule(8, 0.4, 1, 6, "predicted").to_json() == {
        "train_steps": 5, "lr_warmup_steps": 1, "lr_decay_steps": 4, "saving": 0.4, "saving_source": "predicted"}
    assert equal_flops_schedule(10, 0.99, 0, None, "measured").train_steps == 1  # at least a step, no warm-up made
    with pytest.raises(Exception, match="leaves no dense steps"):
        equal_flops_schedule(10, 1.0, 1, None, "measured")


def _write_run(directory, method, steps, val, test, saved=0.0, by_corpus=None):
    """A finished run's metrics.jsonl and run.json, as the harness and launcher leave them (with `by_corpus`, the
    validation and test losses per corpus too)."""
    logs = directory / "logs"
    logs.mkdir(parents=True)
    records = [{"step": s, "loss": 5.0 - s / 10, "flops": s * 100.0 * (1 - saved), "flops_saved_frac": saved}
               for s in range(1, steps + 1)]
    records += [{"step": steps, "val_loss": val}, {"step": steps, "test_loss": test}, {"event": "end", "step": steps}]
    if by_corpus:
        records[-3]["val_loss_by_corpus"] = records[-2]["test_loss_by_corpus"] = by_corpus
    (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    state = {"method": method, "train_steps": steps, "seq_length": 32, "dense_step_flops": 100.0,
             "attempts": [{"seconds": 1.0}]}
    (directory / "run.json").write_text(json.dumps(state))
    return str(directory), state


def test_lr_sweep_chooses_on_validation_and_reports_test_loss(tmp_path):
    """The rate is chosen by validation loss; test loss is what is reported and compared, EST with dense and with
    dense at its FLOPs; the table shows each run at its rate and every rate's validation loss."""
    from est_megatron.analysis.comparison import RunLogs, compare
    from est_megatron.analysis.equal_flops import measured_saving
    from est_megatron.analysis.report import markdown_table
    losses = {  # (val, test) per run and rate: dense's best validation rate is not its best test rate
        "dense": {1e-3: (4.0, 4.10), 2e-3: (3.9, 4.20)},
        "est": {1e-3: (3.8, 4.05), 2e-3: (3.95, 3.90)},
        "dense-at-est-flops": {1e-3: (4.1, 4.40), 2e-3: (4.2, 4.30)}}
    method = {"dense": "dense", "est": "est", "dense-at-est-flops": "dense"}
    logs = []
    for name, rates in losses.items():
        for lr, (val, test) in rates.items():
            seed = _write_run(tmp_path / name / f"lr_{lr:g}" / "seed_1", method[name], 6 if "at" in name else 8,
                              val, test, saved=0.25 if name == "est" else 0.0)
            logs.append(RunLogs(name, [], [(1, *seed)], lr, "est" if "at" in name else None))
    runs, baseline, curves, measure = compare(logs, None, [])
    by_name = {r["name"]: r for r in runs}
    assert baseline == "dense" and measure == "test"
    assert [by_name[n]["lr"] for n in losses] == [2e-3, 1e-3, 1e-3]
    assert by_name["est"]["final_test_loss_mean"] == 4.05 and by_name["dense"]["final_test_loss_mean"] == 4.20
    assert by_name["est"]["test_loss_vs_baseline_pct_mean"] == pytest.approx((4.05 / 4.20 - 1) * 100)
    assert by_name["est"]["equal_flops_baseline"] == "dense-at-est-flops"
    assert by_name["est"]["test_loss_vs_equal_flops_pct_mean"] == pytest.approx((4.05 / 4.40 - 1) * 100)
    assert [row["chosen"] for row in by_name["est"]["lr_sweep"]] == [True, False]
    assert curves["est"][0].path.endswith(os.path.join("lr_0.001", "seed_1", "logs", "metrics.jsonl"))
    assert measured_saving(curves["est"][0], 100.0) == pytest.approx(0.25)

    table = markdown_table({"baseline": baseline, "compared_on": measure, "seeds": [1], "runs": runs}, [])
    main_table = table.split("Validation loss at each")[0]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in main_table.splitlines() if line.startswith("| ")}
    assert rows["| run"][2:10] == ["lr", "seeds done", "val loss", "test loss", "vs dense",
                                   "vs dense at equal FLOPs", "FLOPs saved", "train loss"]
    assert rows["| est"][2:8] == ["0.001", "1/1", "3.8000", "4.0500", "-3.57%", "-7.95%"]
    assert rows["| dense-at-est-flops (dense at est's FLOPs)"][2] == "0.001"
    assert "| est | **3.8000** | 3.9500 |" in table and "| dense | 4.0000 | **3.9000** |" in table


def test_loss_per_corpus_is_compared_seed_by_seed(tmp_path):
    """Prose and code apart: each corpus's final loss, its mean over seeds and its difference to dense's with the
    same seed, in summary and table."""
    from est_megatron.analysis.comparison import RunLogs, compare
    from est_megatron.analysis.report import markdown_table
    corpora = {("dense", 1): {"prose": 4.0, "code": 2.0}, ("dense", 2): {"prose": 5.0, "code": 2.5},
               ("est", 1): {"prose": 3.6, "code": 2.2}, ("est", 2): {"prose": 4.5, "code": 2.5}}
    logs = [RunLogs(name, [], [(seed, *_write_run(tmp_path / name / f"seed_{seed}", name, 8, 3.0, 3.0,
                                                   by_corpus=corpora[name, seed])) for seed in (1, 2)])
            for name in ("dense", "est")]
    runs, baseline, _, measure = compare(logs, None, [])
    est = {r["name"]: r for r in runs}["est"]["val_loss_by_corpus"]
    assert est["prose"]["mean"] == pytest.approx(4.05) and est["code"]["mean"] == pytest.approx(2.35)
    assert est["prose"]["vs_baseline_pct_mean"] == pytest.approx(-10.0)  # -10% and -10%
    assert est["code"]["vs_baseline_pct_mean"] == pytest.approx(5.0)  # +10% and 0%
    table = markdown_table({"baseline": baseline, "compared_on": measure, "seeds": [1, 2], "runs": runs}, [])
    assert "| run | code validation loss (vs dense) | prose validation loss (vs dense) |" in table
    assert "| est | 2.3500 ± 0.2121 (+5.00% ± 7.07) | 4.0500 ± 0.6364 (-10.00% ± 0.00) |" in table


def test_equal_flops_run_waits_for_the_run_it_matches():
    """--jobs starts runs in order, but never an equal-FLOPs run before the run whose FLOPs it is given ends."""
    from est_megatron.cli.compare_runs import Job, RunSpec, next_ready

    def job(name, matched=None):
        return Job(RunSpec(name, []), 1, f"/runs/{name}", [], {}, {}, matched=matched)

    dense, est = job("dense"), job("est")
    at_flops = job("dense-at-est-flops", matched=est)
    assert next_ready([dense, est, at_flops], []) is dense
    assert next_ready([at_flops], [est]) is None  # est still training
    assert next_ready([at_flops], [dense]) is at_flops
    assert next_ready([est, at_flops], [dense]) is est


def test_sigterm_saves_and_stops_every_run_in_flight(harness, tiny_shards):  # noqa: F811
    """SIGTERM to the harness while two runs train: each saves and stops, run.json says so, none is left running,
    and the harness exits 130 with one line that says how to resume."""
    import signal
    import subprocess
    import threading
    import time

    out = harness["root"] / "stopped"
    argv = ["--smoke", "--output-dir", str(out), "--run", "dense", "--run", "est", "--seeds", "3", "--jobs", "2",
            "--data-path", tiny_shards["prefix"], "--tokenizer-model", tiny_shards["tokenizer"],
            "--train-steps", "2000", "--save-interval", "1000", "--no-plot"]

    def stop_once_both_train():
        logs = [out / name / "seed_3" / "train.log" for name in ("dense", "est")]
        deadline = time.time() + 120
        while time.time() < deadline and not all(p.is_file() and re.search(r"^step +\d+/", p.read_text(), re.M)
                                                  for p in logs):  # a trained step (start-up lines say "by step N")
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_both_train, daemon=True).start()
    with pytest.raises(SystemExit) as stop:
        run_harness(argv)
    assert stop.value.code == 130
    for name in ("dense", "est"):
        state = json.loads((out / name / "seed_3" / "run.json").read_text())
        (attempt,) = state["attempts"]
        assert attempt["interrupted"] == "SIGTERM" and attempt["exit_status"] == 0
        assert 0 < attempt["to_step"] < 2000  # saved where it stopped, not at a save interval
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert not left, f"runs still alive: {left}"


def test_a_config_moved_with_the_checkout_is_no_change(tmp_path):
    """A run started from one checkout resumes from another: the default DeepSpeed config's path differs, its
    bytes do not. Other bytes, or another value, are a change."""
    from est_megatron.cli.compare_runs import changed_settings
    old, new, other = (tmp_path / n for n in ("old.json", "new.json", "other.json"))
    old.write_text('{"zero_optimization": {"stage": 1}}')
    new.write_text('{"zero_optimization": {"stage": 1}}')
    other.write_text('{"zero_optimization": {"stage": 2}}')
    assert changed_settings({"deepspeed_config": str(old), "lr": 1e-3},
                            {"deepspeed_config": str(new), "lr": 1e-3}) == []
    assert changed_settings({"deepspeed_config": str(old)}, {"deepspeed_config": str(other)}) == [
        f"deepspeed_config {str(old)!r} -> {str(other)!r}"]
    assert changed_settings({"lr": 1e-3}, {"lr": 2e-3}) == ["lr 0.001 -> 0.002"]


def test_downstream_tasks_scored_once_per_final_checkpoint(harness, tiny_shards, monkeypatch, tmp_path):  # noqa: F811
    """--eval-tasks runs tools/evaluate.py on a finished run's final checkpoint (here the held-out demo task of
    tools/make_demo_tasks.py, from another directory), with --report-only too, keeps the result beside its logs,
    tabulates its accuracy, and does not evaluate it again."""
    pytest.importorskip("lm_eval")
    from est_megatron.evaluation.demo_tasks import CODE_TASK, write_demo_tasks
    tasks = write_demo_tasks(str(tmp_path / "tasks"), items=8, seed=0)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the tasks' data files are absolute paths
    argv = [a for a in harness["argv"] if a != "dense"]
    argv.remove("--run")  # only est: one evaluation
    argv += ["--eval-tasks", CODE_TASK, "--eval-include-path", os.path.dirname(tasks["tasks"][CODE_TASK]["yaml"]),
             "--eval-data-path", tiny_shards["prefix"], "--eval-samples", "4", "--no-plot"]
    summary, out = run_harness(argv + ["--report-only"])  # trains nothing, scores the finished run
    assert "runs to train" not in out
    corpus = os.path.basename(tiny_shards["prefix"])
    assert f"est seed 3: downstream tasks {CODE_TASK} and held-out corpora {tiny_shards['prefix']} on its step-8 " \
        "checkpoint" in out
    (seed,) = _runs(summary)["est"]["seeds"]
    assert 0.0 <= seed["downstream"]["acc"][CODE_TASK] <= 1.0 and seed["downstream"]["loss"][corpus] > 0
    result = json.loads((harness["out"] / "est" / "seed_3" / "downstream_step_8.json").read_text())
    assert {r["documents"] for r in result["lm_eval"]["table"]} == {8}
    assert [c["samples"] for c in result["perplexity"]["corpora"]] == [4]
    assert f"| {CODE_TASK} acc | {corpus} loss |" in out
    _, again = run_harness(argv)
    assert "downstream tasks" not in again


def test_downstream_accuracy_in_points_and_corpus_loss_in_percent_seed_by_seed():
    from est_megatron.analysis.downstream import compare_downstream

    def seeds(*results):
        return {"seeds": [{"seed": seed, "downstream": {"acc": {"t": acc}, "loss": {"c": loss}}}
                          for seed, (acc, loss) in enumerate(results, 1)]}
    base, run = seeds((0.50, 4.0), (0.40, 5.0)), seeds((0.55, 3.8), (0.43, 5.0))
    result = compare_downstream(run, base)
    t, c = result["acc"]["t"], result["loss"]["c"]
    assert t["mean"] == pytest.approx(0.49) and t["vs_baseline_mean"] == pytest.approx(4.0)
    assert t["vs_baseline_sd"] == pytest.approx(2 ** 0.5)
    assert c["mean"] == pytest.approx(4.4) and c["vs_baseline_mean"] == pytest.approx(-2.5)
    assert compare_downstream(base, base)["acc"]["t"]["vs_baseline_mean"] is None


def test_lr_sweep_compares_rates_on_the_seeds_finished_at_all_of_them():
    """A sweep read while it trains: an unfinished run takes no part, and rates are compared on the seeds finished
    at every rate (here seed 1), not on means over different seeds."""
    from est_megatron.analysis.lr_sweep import choose_rate

    def entry(*seeds):
        return {"seeds": [{"seed": seed, "status": status, "final_val_loss": val,
                           "final_test_loss": None if val is None else val + 0.1} for seed, status, val in seeds]}
    by_rate = {1e-3: entry((1, "finished", 4.0), (2, "finished", 3.5)),  # seed 2 is an easy seed
               2e-3: entry((1, "finished", 3.9), (2, "incomplete", 4.5)),
               4e-3: entry((1, "not started", None))}
    best, rows = choose_rate(by_rate)
    assert best == 2e-3  # 3.9 < 4.0 on seed 1; over each rate's own seeds 1e-3 (3.75) would win
    assert [r["seeds_finished"] for r in rows] == [2, 1, 0]
    assert rows[1]["val_loss_mean"] == 3.9 and rows[1]["chosen_on_seeds"] == [1]
    assert rows[2]["val_loss_mean"] is None and not rows[2]["chosen"]
    assert choose_rate({1e-3: entry((1, "incomplete", 4.0))})[0] is None
