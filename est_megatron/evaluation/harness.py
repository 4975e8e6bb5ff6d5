"""Zero-shot tasks through lm-evaluation-harness (the `lm_eval` library): its HFLM runs a Hugging Face folder of
the checkpoint (est_megatron.evaluation.source exports one), and this module picks the tasks, says where their
data comes from and turns the results into the paper's table.

Task data: the Hugging Face Hub when it is reachable; offline (HF_DATASETS_OFFLINE=1, or --hub offline, or the
Hub found unreachable), the datasets cache filled by an earlier online run; and always the YAML tasks of
--include-path, which may read local files (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`).
"""
from __future__ import annotations

import json
import math
import os
import socket
from typing import Dict, List, Optional, Sequence
from urllib.parse import urlparse

from est_megatron.errors import UsageError

# The GPT4All suite the paper reports for TinyLlama (zero-shot accuracy).
GPT4ALL_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande")
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hub (HF_ENDPOINT, default huggingface.co) opens within `timeout` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def choose_hub_mode(mode: str) -> str:
    """Set the offline variables for `mode` ("online", "offline" or "auto": probe the Hub unless a variable
    already says offline); returns the mode used. Must run before `datasets` is imported, which reads them once."""
    if mode == "auto":
        already = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)
        mode = "offline" if already or not hub_reachable() else "online"
    if mode == "offline":
        for variable in OFFLINE_VARIABLES:
            os.environ[variable] = "1"
    return mode


def parse_tasks(words: Optional[Sequence[str]]) -> List[str]:
    """`--tasks a,b c` -> [a, b, c]; none given -> the GPT4All suite."""
    tasks = [t for word in (words or ()) for t in word.split(",") if t]
    return tasks or list(GPT4ALL_TASKS)


def task_manager(include_path: Optional[Sequence[str]], tasks: Sequence[str]):
    """lm_eval's TaskManager over its own tasks and --include-path; unknown task names are one clear error."""
    from lm_eval.tasks import TaskManager
    for path in include_path or ():
        if not os.path.isdir(path):
            raise UsageError(f"--include-path {path} is not a directory of lm-eval YAML task files")
    manager = TaskManager(include_path=list(include_path) if include_path else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}; list them with `lm_eval ls tasks`, or "
                         "add YAML task files with --include-path")
    return manager


def _is_data_unavailable(err: BaseException) -> bool:
    """Errors of a dataset that is neither on a reachable Hub nor in the cache (the names differ across the
    datasets / huggingface_hub versions, so they are matched by name)."""
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return bool(names & {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError",
                         "HfHubHTTPError", "ProxyError", "ConnectTimeout", "MaxRetryError"})


def run_tasks(hf_folder: str, tasks: Sequence[str], include_path: Optional[Sequence[str]] = None,
              batch_size: int = 8, device: str = "cpu", dtype: str = "float32", num_fewshot: Optional[int] = None,
              limit: Optional[float] = None, log_samples: bool = False) -> dict:
    """lm_eval.simple_evaluate on a Hugging Face folder; returns lm-eval's results dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    manager = task_manager(include_path, tasks)
    model = HFLM(pretrained=hf_folder, batch_size=batch_size, device=device, dtype=dtype)
    try:
        return lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, num_fewshot=num_fewshot,
                                       limit=limit, log_samples=log_samples)
    except FileNotFoundError as err:
        if not str(err).startswith("Unable to find"):  # datasets' message for a missing data file
            raise
        raise UsageError(f"a task's data file is missing ({err}); data_files paths in YAML tasks are relative to the "
                         f"directory you run from ({os.getcwd()}): run from theirs or write absolute paths") from None
    except Exception as err:  # noqa: BLE001 -- re-raised unless it is a missing dataset
        if not _is_data_unavailable(err):
            raise
        raise UsageError(f"task data could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                         "offline, run once with the Hub reachable to fill the datasets cache, or pass "
                         "--include-path with YAML tasks on local files") from None


def _stderr(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def table_rows(results: dict) -> List[Dict]:
    """(task, metric, value, stderr, documents) rows of lm-eval's results. Metrics are the "metric,filter" keys;
    the others (name, alias, sample_len) describe the task."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, flt = key.partition(",")
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            rows.append({"task": task, "metric": metric if flt == "none" else f"{metric} ({flt})",
                         "value": float(value), "stderr": _stderr(metrics.get(f"{metric}_stderr,{flt}")),
                         "documents": metrics.get("sample_len")})
    return rows


def average_accuracy(rows: List[Dict]) -> Optional[float]:
    """Mean `acc` over the tasks that report one, the paper's GPT4All average (None for fewer than two tasks)."""
    accs = [r["value"] for r in rows if r["metric"] == "acc"]
    return sum(accs) / len(accs) if len(accs) >= 2 else None


def format_table(rows: List[Dict]) -> str:
    cells = [("task", "metric", "value", "stderr")]
    for r in rows:
        value = f"{r['value']:.4f}" if abs(r["value"]) < 1e4 else f"{r['value']:.4g}"
        cells.append((r["task"], r["metric"], value, "-" if r["stderr"] is None else f"{r['stderr']:.4f}"))
    mean = average_accuracy(rows)
    if mean is not None:
        cells.append(("average", "acc", f"{mean:.4f}", "-"))
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(results: dict) -> dict:
    """What tools/evaluate.py writes: the table, lm-eval's per-task results, versions and few-shot counts."""
    rows = table_rows(results)
    return {"table": rows, "average_acc": average_accuracy(rows),
            "results": json.loads(json.dumps(results["results"], default=str)),
            "versions": json.loads(json.dumps(results.get("versions", {}), default=str)),
            "n-shot": json.loads(json.dumps(results.get("n-shot", {}), default=str))}
