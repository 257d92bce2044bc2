"""When a stage may reuse a finished run instead of training again.

A stage's work is identified by its stage key: a hash of its resolved config sections, the split key
(data digest, data config, seed), the runs it builds on, and the package's own source (an edit to the
code invalidates every reusable stage). A FINISHED run in the current experiment with the same key
is the stage's result; `--force` runs the stage anyway.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import tracking

PACKAGE_DIR = Path(__file__).resolve().parent


def source_hash() -> str:
    """Hash of the package's own source."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + path.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, sections: dict, split_key: str, upstream: list[str]) -> str:
    """Identity of a stage's work: its resolved config, the data and split, the runs it builds on, the code."""
    blob = json.dumps({"stage": stage, "config": sections, "split": split_key, "upstream": upstream,
                       "code": source_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def reusable(stage: str, sections: dict, split_key: str, upstream: list[str], force: bool) -> tuple[str, str | None]:
    """The stage key, and the newest FINISHED run carrying it (None with `force`, or when there is none)."""
    key = stage_key(stage, sections, split_key, upstream)
    return key, None if force else tracking.newest_finished(f"tags.stage_key = '{key}'")
