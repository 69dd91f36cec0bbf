"""The examples in docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "latentgeo.decoders",
    "latentgeo.metric",
    "latentgeo.variance",
    "latentgeo._fxjac",
    "latentgeo.geodesics.ode",
    "latentgeo.geodesics.ivp",
    "latentgeo.geodesics.connecting",
    "latentgeo.plotting",
    "latentgeo.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
