"""The trial manager's run directory: every trial, model and controller, and a JSON-lines log.

    <root>/<run_id>/config.json                  the configuration of the run
                    trials/trial_000.json        every trial record, as it arrives
                    models/model_v001.json       every model update
                    controllers/controller_v001.json
                    report.json                  the learning report at the end
                    log.jsonl                    every status message, one per line
Files are written to a temporary name and renamed (os.replace), so a crash leaves either the old
file or the new one; log lines are flushed and fsynced one by one (a crash may cut the last).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from .common import to_json


class RunDirectory:
    """One run's files; safe to call from several threads."""

    def __init__(self, root: str | Path, run_id: str) -> None:
        self.path = Path(root) / run_id
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write_json(self, relative: str, data: Any) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_json(data) if isinstance(data, dict) else json.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def log(self, entry: dict[str, Any]) -> None:
        line = to_json(entry) + "\n"
        with self._lock, open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
