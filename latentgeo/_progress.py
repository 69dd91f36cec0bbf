"""One convention for progress bars: ``progress=None | True | False``.

``None`` (the default everywhere) shows a bar only where someone can see it: in a terminal
(stderr is a TTY) or in a Jupyter kernel, and never in scripts whose stderr is a file or a
pipe. ``True`` forces it, ``False`` hides it. Bars are :mod:`tqdm.auto` (widgets in Jupyter,
which needs ``ipywidgets``: ``pip install latentgeo[notebook]``; without it a text bar is
shown in Jupyter too, instead of tqdm's "IProgress not found").

Example:
    >>> from latentgeo._progress import progress_bar
    >>> with progress_bar(total=3, desc="work", progress=False) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
"""

from __future__ import annotations

import sys
from typing import Optional

__all__ = ["progress_bar", "show_progress"]


def show_progress(progress: Optional[bool]) -> bool:
    """Resolve ``progress`` (None: only in a terminal or a Jupyter kernel)."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be None, True or False, got {progress!r}")
        return progress
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


def progress_bar(total: Optional[int] = None, desc: str = "", progress: Optional[bool] = None, unit: str = "it", **kwargs):
    """A :mod:`tqdm.auto` bar (disabled unless :func:`show_progress` says so)."""
    tqdm = _bar_class()
    return tqdm(total=total, desc=desc, disable=not show_progress(progress), leave=False, unit=unit, **kwargs)


def _bar_class():
    """``tqdm.auto.tqdm`` (widgets) in Jupyter when ``ipywidgets`` is installed; the text bar
    otherwise: without ipywidgets the widget bar shows only "IProgress not found"."""
    if "ipykernel" in sys.modules:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            from tqdm.std import tqdm

            return tqdm
    from tqdm.auto import tqdm

    return tqdm
