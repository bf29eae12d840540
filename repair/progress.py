"""One progress callback for every long loop: tqdm in the CLI, ``gr.Progress`` in the UI."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

# A callback receives (description, completed, total). ``total`` is None when unknown.
ProgressCallback = Callable[[str, int, "int | None"], None]

T = TypeVar("T")


def track(items: Iterable[T], desc: str, progress: ProgressCallback | None, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` and report each one to ``progress``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if progress is not None:
        progress(desc, 0, total)
    for done, item in enumerate(items, start=1):
        yield item
        if progress is not None:
            progress(desc, done, total)


class TqdmProgress:
    """A progress callback that draws one tqdm bar per description on stderr."""

    def __init__(self, disable: bool = False):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, object] = {}
        self._disable = disable

    def __call__(self, desc: str, completed: int, total: int | None) -> None:
        bar = self._bars.get(desc)
        if bar is None:
            bar = self._tqdm(desc=desc, total=total, file=sys.stderr, disable=self._disable, leave=False)
            self._bars[desc] = bar
        bar.n = completed  # type: ignore[attr-defined]
        bar.refresh()  # type: ignore[attr-defined]
        if total is not None and completed >= total:
            bar.close()  # type: ignore[attr-defined]
            del self._bars[desc]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()  # type: ignore[attr-defined]
        self._bars.clear()
