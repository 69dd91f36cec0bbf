"""The sections a report runs: the built-in ones (assembled by :mod:`latentgeo.report`) and
the user's own (:func:`register_section`)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from .context import CONTEXT_DEFAULTS, ReportSection

__all__ = ["register_section", "unregister_section", "report_sections", "get_section", "known_options"]

_SECTIONS: dict[str, ReportSection] = {}
RESERVED = {"latentgeo_version", "created_utc", "random_state", "timings", "files", "sections", "out_dir", "chart"}


def _add(section: ReportSection, replace: bool = False) -> ReportSection:
    name = section.name
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"section name must be an identifier string, got {name!r}")
    if name in RESERVED:
        raise ValueError(f"section name {name!r} is reserved for the summary's own keys")
    if not (isinstance(section.order, (int, float)) and math.isfinite(section.order)):
        raise ValueError(f"order must be a finite number, got {section.order!r}")
    if not callable(section.fn):
        raise ValueError(f"section {name!r} must be callable, got {type(section.fn).__name__}")
    clash = sorted(set(section.defaults) & set(CONTEXT_DEFAULTS))
    if clash:
        raise ValueError(f"section {name!r} redefines the report-wide option(s) {clash}")
    old = _SECTIONS.get(name)
    if old is not None and not replace and old.fn is not section.fn:
        raise ValueError(f"a report section named {name!r} is already registered (pass replace=True)")
    _SECTIONS[name] = section
    return section


def register_section(
    name: str,
    fn: Optional[Callable] = None,
    *,
    order: float = 50.0,
    description: str = "",
    defaults: Optional[Mapping[str, Any]] = None,
    replace: bool = False,
):
    """Register a report section of your own (usable as a decorator). Returns ``fn``.

    Args:
        name: the section's key in ``summary.json`` (an identifier, unique).
        fn: ``fn(ctx: ReportContext) -> dict | None``.
        order: sections run in increasing order (built-ins use 0–70).
        description: one line for listings.
        defaults: the options the section reads from ``ctx.options``, with their defaults
            (``write_report(..., name=value)`` overrides them).
        replace: allow re-registering an existing name (e.g. on module reload).

    Example:
        >>> from latentgeo.report import register_section, unregister_section
        >>> @register_section("n_codes", order=80, defaults={"n_codes_note": "codes analysed"})
        ... def n_codes(ctx):
        ...     return {"n": int(ctx.codes.shape[0]), "note": ctx.options["n_codes_note"]}
        >>> unregister_section("n_codes").name
        'n_codes'
    """

    def deco(f):
        _add(ReportSection(name, f, float(order) if isinstance(order, (int, float)) else order, description,
                           dict(defaults or {})), replace=replace)
        return f

    return deco if fn is None else deco(fn)


def unregister_section(name: str) -> ReportSection:
    """Remove a registered section and return it (``ValueError`` if unknown)."""
    if name not in _SECTIONS:
        raise ValueError(f"no report section named {name!r}; registered: {', '.join(_SECTIONS)}")
    return _SECTIONS.pop(name)


def report_sections() -> list[ReportSection]:
    """All registered sections, in run order."""
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


def get_section(name: str) -> Optional[ReportSection]:
    """The registered section ``name`` or ``None``."""
    return _SECTIONS.get(name)


def known_options() -> dict:
    """Every option a report understands: the report-wide ones and each registered section's."""
    opts = dict(CONTEXT_DEFAULTS)
    for s in report_sections():
        opts.update(s.defaults)
    return opts
