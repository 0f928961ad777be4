"""Content-addressed runs: a run's folder is named by a hash of everything that decides it.

Two notebooks asking for the same run (notebook 03's SDPO run is notebook 04's
fixed-teacher run) therefore share one folder and compute it once, and a rerun finds it
finished or resumes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from sdlib.runfolder import file_digest

__all__ = ["file_digest", "folder", "key"]


def key(value) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def folder(root: str | Path, kind: str, label: str, value) -> Path:
    """``<root>/<kind>/<label>-<key(value)>``; or, if another label already holds this
    key, that folder: the label only names the work, the key decides it (notebook 05's
    ``SDPO |D|=1200`` evaluations are notebook 03's ``SDPO`` ones)."""
    digest = key(value)
    # a label is a name for people ("SDPO w/o thinking"): one path component of safe characters
    name = re.sub(r"[^\w.=+-]+", "_", label)
    mine = Path(root) / kind / f"{name}-{digest}"
    if mine.exists():
        return mine
    return next(iter(sorted(mine.parent.glob(f"*-{digest}"))), mine)
