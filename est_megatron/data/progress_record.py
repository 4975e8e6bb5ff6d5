"""A preprocessing run's progress record (PREFIX.progress.json), so that a killed run resumes where it stopped.

Written at every input-file boundary and at least once a minute, after the open shard is on disk: where to read
next (input file, records of it already read), the writer's state, and the counts so far. The per-file counts of
finished files go to an append-only PREFIX.progress.sources.jsonl (one line per file), so the record stays small
for 59,166 SlimPajama files. The record also holds the run's settings (tokenizer, filters, shard size, input
files, part): a restart with other settings would mix two corpora in one output, so it is refused in one line.
"""
import json
import os
from typing import Any, Dict, List, Optional

from est_megatron.data.atomic import save_json
from est_megatron.errors import UsageError

FORMAT = "est_megatron preprocessing progress"
VERSION = 1
SETTING_NAMES = {"tokenizer_sha256": "tokenizer", "options": "input format or filters", "append_eod": "EOD flag",
                 "add_bos": "BOS flag", "shard_size": "--shard-size", "dtype": "token dtype",
                 "files_sha256": "input files (or their sizes)", "part": "--part/--num-parts"}


def record_path(prefix: str) -> str:
    return f"{prefix}.progress.json"


def sources_path(prefix: str) -> str:
    return f"{prefix}.progress.sources.jsonl"


class ProgressRecord:
    """Reads and writes the progress record of the run writing PREFIX."""

    def __init__(self, prefix: str, settings: Dict[str, Any]) -> None:
        self.prefix, self.settings = prefix, settings
        self._sources = None

    def load(self) -> Optional[Dict[str, Any]]:
        """The interrupted run's state, or None if there is none; UsageError if it ran with other settings."""
        path = record_path(self.prefix)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
            recorded = state["settings"]
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{path} is not a preprocessing progress record ({err}); pass --restart to start "
                             f"over") from None
        changed = [SETTING_NAMES.get(k, k) for k in self.settings if recorded.get(k) != self.settings[k]]
        if changed:
            raise UsageError(f"{path}: an interrupted run of this --output-prefix used another "
                             f"{', '.join(changed)}; rerun with its flags to resume it, or pass --restart to start "
                             f"over")
        state["finished_sources"] = self._read_sources(state["finished_files"])
        return state

    def _read_sources(self, count: int) -> List[Dict[str, Any]]:
        path = sources_path(self.prefix)
        lines = []
        if os.path.isfile(path):
            with open(path) as f:
                lines = f.readlines()
        complete = [line for line in lines[:count] if line.endswith("\n")]
        if len(complete) < count:
            raise UsageError(f"{path} holds {len(complete)} of the {count} finished files the progress record "
                             f"counts; pass --restart to start over")
        if len(lines) > count:  # lines written after the record (the run was killed between the two)
            with open(path, "r+") as f:
                f.truncate(sum(len(line.encode()) for line in complete))
        return [json.loads(line) for line in complete]

    def finished_file(self, source: Dict[str, Any]) -> None:
        """Append one finished file's counts (made durable by the next `save`)."""
        if self._sources is None:
            self._sources = open(sources_path(self.prefix), "a")
        self._sources.write(json.dumps(source) + "\n")

    def save(self, state: Dict[str, Any]) -> None:
        if self._sources is not None:
            self._sources.flush()
            os.fsync(self._sources.fileno())
        save_json(record_path(self.prefix), {"format": FORMAT, "version": VERSION, "settings": self.settings,
                                             **state})

    def remove(self) -> None:
        """The run is complete: its manifest now holds everything."""
        if self._sources is not None:
            self._sources.close()
        for path in (record_path(self.prefix), sources_path(self.prefix)):
            if os.path.exists(path):
                os.remove(path)

    def close(self) -> None:
        if self._sources is not None:
            self._sources.close()
