"""The package's layout rules (CONTRIBUTING.md), checked on the source.

* No module imports a private name (``_x``) of a module outside its own subpackage; the
  shared infrastructure modules (``_validation``, ``_random``, ``_progress``, ``_version``) and
  the ``_autodiff`` package are imported by their public names.
* ``import latentgeo`` stays cheap: scipy's sparse graph code, matplotlib's pyplot and the
  optional engines load only when used.
"""

import ast
import subprocess
import sys
from pathlib import Path

import latentgeo

ROOT = Path(latentgeo.__file__).parent


def _package_of(module: str) -> str:
    return module.rsplit(".", 1)[0]


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            pkg = ".".join(parts)
        else:
            pkg = ".".join(parts[:-1])
        yield path, ".".join(parts), pkg


def _resolve(pkg: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = pkg.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_imports_across_subpackages():
    bad = []
    for path, mod, pkg in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(pkg, node)
            if not target.startswith("latentgeo"):
                continue
            # a private module of another subpackage (latentgeo.geodesics._lm from latentgeo.report, ...)
            tparts = target.split(".")
            for i, part in enumerate(tparts[1:], start=1):
                owner = ".".join(tparts[:i])
                if part.startswith("_") and not pkg.startswith(owner + ".") and pkg != owner and owner != "latentgeo":
                    bad.append(f"{mod}: from {target} import ... (private module of {owner})")
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                tpkg = target if (ROOT.parent / Path(*target.split("."))).is_dir() else _package_of(target)
                if pkg == tpkg or pkg.startswith(tpkg + ".") and target.startswith(pkg):
                    continue
                if tpkg == pkg:
                    continue
                bad.append(f"{mod}: from {target} import {name}")
    assert not bad, "private names imported across subpackages:\n" + "\n".join(bad)


def test_import_is_cheap():
    code = (
        "import sys, latentgeo; "
        "heavy = [m for m in ('scipy.sparse', 'scipy.spatial', 'matplotlib.pyplot', 'dask', 'zuko', 'geoopt') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import latentgeo loaded {out}"
    lazy = subprocess.run(
        [sys.executable, "-c", "import sys, latentgeo as lg; lg.LatentGraph; print('scipy.sparse' in sys.modules)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert lazy == "True"
