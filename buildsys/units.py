"""Sizes (8G, 512M) and durations (90s, 2h) as people write them."""
from __future__ import annotations

import re

_SIZE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIME = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def size(text: str) -> int | None:
    """Bytes, or None if `text` is not a size."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text.strip().lower())
    return int(float(m.group(1)) * _SIZE[m.group(2)]) if m else None


def duration(text: str, units: str, bare: bool) -> float | None:
    """Seconds, or None if `text` is not a duration in one of `units`
    (bare: a plain number counts as seconds)."""
    m = re.fullmatch(rf"(\d+(?:\.\d+)?)\s*([{units}]{'?' if bare else ''})", text.strip().lower())
    return float(m.group(1)) * _TIME[m.group(2)] if m else None
