"""The README's quickstart runs as written.

The block is the first fenced ```python block under a heading containing "Quickstart", or any
```python block whose first line is the comment ``# readme-quickstart``. It runs in a fresh
interpreter in an empty folder (files it writes land there), with the Agg backend.
``LATENTGEO_README`` points the test at another file (e.g. a draft README).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_block(text: str):
    """The quickstart code of a README (see the module doc), or ``None``."""
    blocks = [(m.start(), m.group(1)) for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)]
    for _, code in blocks:
        if code.lstrip().startswith("# readme-quickstart"):
            return code
    for m in re.finditer(r"^(#{1,6})[ \t]+[^\n]*quickstart[^\n]*$", text, re.M | re.I):
        level = len(m.group(1))
        nxt = re.compile(rf"^#{{1,{level}}}[ \t]", re.M).search(text, m.end())
        end = nxt.start() if nxt else len(text)
        for start, code in blocks:
            if m.end() <= start < end:
                return code
    return None


def test_quickstart_block_extraction():
    readme = "# X\n\n## Quickstart\n\ntext\n\n```bash\npip install x\n```\n\n```python\nprint(1)\n```\n\n## API\n" \
             "```python\nprint(2)\n```\n"
    assert quickstart_block(readme) == "print(1)\n"
    assert quickstart_block(readme.replace("## API", "## API\n```python\n# readme-quickstart\nprint(3)\n```")) \
        .endswith("print(3)\n")
    assert quickstart_block("## Quickstart\n\nno code\n\n## Next\n```python\nprint(2)\n```\n") is None
    assert quickstart_block("# Title\n```python\nprint(2)\n```\n") is None


def test_readme_quickstart_runs_as_written(tmp_path):
    path = Path(os.environ.get("LATENTGEO_README", ROOT / "README.md"))
    code = quickstart_block(path.read_text())
    if code is None:
        pytest.skip(f"{path.name} has no ```python block under a 'Quickstart' heading (or marked "
                    "'# readme-quickstart'); nothing to run")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, f"the README quickstart failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"
    assert wall < 120, f"the README quickstart took {wall:.0f} s; a quickstart should take seconds"
