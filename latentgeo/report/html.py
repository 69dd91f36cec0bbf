"""``index.html``: the report as one page that opens offline.

:func:`write_report` calls :func:`write_html` as its last step: the page shows, section by
section in run order, what the section computed (its description), how long it took, the
figures it wrote and its numbers from ``summary.json`` as tables (per-item lists of equal
length, e.g. the geodesics' per-pair lengths, side by side in one table). It needs no
network: the style is inline, there is no script, and images are referenced by their
relative file names beside ``index.html`` (the folder can be moved or zipped as a whole).

Example:
    >>> from latentgeo.report.html import render_html
    >>> page = render_html({"sections": ["demo"], "demo": {"n": 3, "ratio": [0.5, 0.25]},
    ...                     "timings": {"demo_s": 0.01}, "files": []})
    >>> "<h2" in page and "0.25" in page and "http" not in page
    True
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .context import atomic_write_text

__all__ = ["render_html", "write_html"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
#: most list items shown inline before "… (N values)"
MAX_INLINE = 12

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232a;
       background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1.2rem 1.2rem 3rem; }
h1 { font-size: 1.6rem; margin: .4rem 0 .2rem; }
h2 { font-size: 1.25rem; margin: 0 0 .3rem; }
h3 { font-size: 1rem; margin: .9rem 0 .3rem; }
section, header, nav { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: .9rem 1.1rem;
                       margin: 0 0 1rem; }
.desc { margin: .1rem 0 .4rem; color: #39424c; }
.meta { color: #5b6670; font-size: .88rem; margin: 0 0 .5rem; }
.skipped { color: #7a5a00; background: #fff7df; border-radius: 4px; padding: .35rem .6rem; }
figure { margin: .6rem 0 .9rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e6ea; background: #fff; }
figcaption { font-size: .85rem; color: #5b6670; margin-top: .2rem; }
.tw { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; margin: .3rem 0 .6rem; max-width: 100%; }
th, td { border: 1px solid #e1e4e8; padding: .22rem .5rem; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; word-break: break-word; }
th { background: #f1f3f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td table { margin: 0; }
table.kv td.num { text-align: left; }
table.kv > tbody > tr > th { white-space: nowrap; width: 1%; }
td.short { white-space: nowrap; }
@media (max-width: 900px) { td.short, td.num { white-space: normal; } main { padding: .6rem; }
                            table.items th, table.items td { overflow-wrap: anywhere; word-break: break-all;
                                                             padding: .2rem .3rem; font-size: .8rem; } }
table.items th { overflow-wrap: normal; word-break: normal; }
nav ol { margin: .2rem 0; padding-left: 1.4rem; columns: 2; }
code { font-size: .9em; overflow-wrap: anywhere; }
a { color: #0b5cad; }
"""


def _esc(x) -> str:
    return _html.escape(str(x), quote=True)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _cell(v) -> str:
    if _is_scalar(v) and not isinstance(v, (str, bool)) and v is not None:
        return f'<td class="num">{_esc(_fmt(v))}</td>'
    text = _value(v)
    short = (isinstance(v, str) and len(v) <= 20) or (_short_list(v) and len(text) <= 20)
    return f'<td class="short">{text}</td>' if short else f"<td>{text}</td>"


def _inline_list(v: list) -> str:
    parts = [(_fmt(x) if _is_scalar(x) else "[" + ", ".join(_fmt(y) for y in x) + "]") for x in v[:MAX_INLINE]]
    more = f" … ({len(v)} values)" if len(v) > MAX_INLINE else ""
    return _esc(", ".join(parts) + more)


def _short_list(x) -> bool:
    return isinstance(x, list) and len(x) <= 4 and all(_is_scalar(y) for y in x)


def _value(v) -> str:
    """HTML for one summary value (nested tables for dicts and lists of dicts)."""
    if isinstance(v, dict):
        return _kv_table(v) if v else "—"
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            cols: list = []
            for x in v:
                cols += [k for k in x if k not in cols]
            head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
            rows = "".join("<tr>" + "".join(_cell(x.get(c)) for c in cols) + "</tr>" for x in v)
            return f'<div class="tw"><table><tr>{head}</tr>{rows}</table></div>'
        if all(_is_scalar(x) or _short_list(x) for x in v):
            return _inline_list(v) if v else "—"
        return _esc(repr(v)[:400])
    return _esc(_fmt(v))


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th>{_cell(v)}</tr>" for k, v in d.items())
    return f'<div class="tw"><table class="kv">{rows}</table></div>'


def _columns(d: dict) -> tuple[list, dict]:
    """Keys of ``d`` holding per-item lists of one common length (at least 2 keys), and the rest."""
    lengths: dict = {}
    for k, v in d.items():
        if isinstance(v, list) and len(v) >= 2 and all(_is_scalar(x) or _short_list(x) for x in v):
            lengths.setdefault(len(v), []).append(k)
    best = max(lengths.values(), key=len, default=[])
    if len(best) < 2:
        return [], d
    return best, {k: v for k, v in d.items() if k not in best}


def _section_body(res) -> str:
    if not isinstance(res, dict):
        return f"<p>{_value(res)}</p>" if res is not None else ""
    out = []
    if "skipped" in res:
        out.append(f'<p class="skipped">Skipped: {_esc(res["skipped"])}</p>')
        res = {k: v for k, v in res.items() if k != "skipped"}
    cols, rest = _columns(res)
    if rest:
        out.append(_kv_table(rest))
    if cols:
        n = len(res[cols[0]])
        head = "<th>#</th>" + "".join(f"<th>{_esc(c).replace('_', '_<wbr>')}</th>" for c in cols)
        rows = "".join(
            f'<tr><td class="num">{i}</td>' + "".join(_cell(res[c][i]) for c in cols) + "</tr>" for i in range(n)
        )
        out.append(f'<h3>Per item</h3><div class="tw"><table class="items"><tr>{head}</tr>{rows}</table></div>')
    return "".join(out)


def _figures(files: Iterable[str]) -> str:
    out = []
    for f in files:
        if f.lower().endswith(IMAGE_SUFFIXES):
            src = _esc(Path(f).as_posix())
            out.append(f'<figure><img src="{src}" alt="{src}"><figcaption>{src}</figcaption></figure>')
    others = [f for f in files if not f.lower().endswith(IMAGE_SUFFIXES)]
    if others:
        out.append('<p class="meta">Files: ' + ", ".join(f'<a href="{_esc(f)}">{_esc(f)}</a>' for f in others) + "</p>")
    return "".join(out)


def render_html(summary: dict, sections: Optional[Sequence[tuple]] = None, title: Optional[str] = None) -> str:
    """The report page as a string.

    Args:
        summary: the report summary (as written to ``summary.json``).
        sections: ``(name, description, files)`` per section in run order (``files``: the
            files the section wrote, relative to the report folder). Default: the summary's
            ``sections``, descriptions from the registry, the figures listed at the end.
        title: page title (default: ``"latentgeo report — <name>"``).
    """
    if sections is None:
        from .registry import get_section

        names = list(summary.get("sections", []))
        sections = [(n, getattr(get_section(n), "description", ""), []) for n in names]
        assigned: list = []
    else:
        assigned = [f for _, _, fs in sections for f in fs]
    timings = summary.get("timings", {}) or {}
    name = (summary.get("dataset") or {}).get("name") if isinstance(summary.get("dataset"), dict) else None
    title = title or f"latentgeo report — {name or 'analysis'}"

    head = {
        "latentgeo version": summary.get("latentgeo_version"),
        "created (UTC)": summary.get("created_utc"),
        "random state": summary.get("random_state"),
        "command": " ".join(str(c) for c in summary["command"]) if isinstance(summary.get("command"), list) else None,
        "source": summary.get("source"),
        "report time": None if timings.get("report_s") is None else f"{timings['report_s']:.2f} s",
    }
    head.update({k.removesuffix("_s").replace("_", " ") + " time": f"{v:.2f} s" for k, v in timings.items()
                 if k.endswith("_s") and k[:-2] not in {s[0] for s in sections} and k != "report_s"
                 and isinstance(v, (int, float))})
    head = {k: v for k, v in head.items() if v is not None}

    nav = []
    body = []
    for sec_name, desc, files in sections:
        res = summary.get(sec_name)
        t = timings.get(f"{sec_name}_s")
        status = "skipped" if isinstance(res, dict) and "skipped" in res else ("ran" if res is not None else "no output")
        tt = "" if t is None else f", {t:.2f} s"
        nav.append(f'<li><a href="#sec-{_esc(sec_name)}">{_esc(sec_name)}</a> '
                   f'<span class="meta">({status}{tt})</span></li>')
        meta = f"computed in {t:.3f} s" if t is not None else "time not recorded"
        body.append(
            f'<section id="sec-{_esc(sec_name)}"><h2>{_esc(sec_name)}</h2>'
            + (f'<p class="desc">{_esc(desc)}</p>' if desc else "")
            + f'<p class="meta">{meta}</p>'
            + _figures(files)
            + _section_body(res)
            + "</section>"
        )
    files = [f for f in summary.get("files", []) if f not in assigned and f != "index.html"]
    rest_figs = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if rest_figs:
        body.append('<section id="sec-figures"><h2>Other figures</h2>' + _figures(rest_figs) + "</section>")
    links = ", ".join(f'<a href="{_esc(f)}">{_esc(f)}</a>' for f in files)
    body.append(
        '<section id="sec-files"><h2>Files and timings</h2>'
        f'<p class="meta">All numbers on this page are those of <a href="summary.json">summary.json</a>.</p>'
        f"<p>{links or '—'}</p>" + _kv_table({k: v for k, v in timings.items()}) + "</section>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f"<header><h1>{_esc(title)}</h1>{_kv_table(head)}</header>"
        f"<nav><h2>Sections</h2><ol>{''.join(nav)}</ol></nav>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )


def write_html(summary: dict, out_dir, sections: Optional[Sequence[tuple]] = None, name: str = "index.html") -> Path:
    """Write :func:`render_html` atomically to ``out_dir/name``; returns the path."""
    out = Path(out_dir) / name
    atomic_write_text(out, render_html(summary, sections))
    return out
