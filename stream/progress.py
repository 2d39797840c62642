"""One progress-bar factory for long offline work (simulate, read, features, train).

Bars go to stderr and draw only on a terminal: in CI logs and pipes they would print a
line per refresh. Pass ``enabled=False`` (the CLI's ``--quiet``) to silence them anywhere.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int | float | None, desc: str, *, enabled: bool = True, unit: str = "ev") -> tqdm:
    """A tqdm bar on stderr; hidden when disabled or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, mininterval=0.5,
                disable=None if enabled else True)
