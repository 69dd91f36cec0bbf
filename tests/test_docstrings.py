"""Every docstring example in the package runs and prints what it claims.

The modules are discovered, not listed: any module of ``latentgeo`` whose source holds a
``>>>`` example is collected, so a new module's examples are tested from the day it lands.
"""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import latentgeo


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(latentgeo.__path__, prefix="latentgeo."):
        spec = importlib.util.find_spec(info.name)
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_examples_are_discovered():
    assert len(MODULES) >= 10 and "latentgeo.metric" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has '>>>' in its source but doctest found no examples"
    assert result.failed == 0
