import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Tests that execute notebooks or user code in-process must not leak torch's global defaults."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def no_default_budget(monkeypatch):
    """Closed-form tests check what the solvers return, not how fast a loaded machine runs them: the
    default per-pair time budget (1 s of wall time) is lifted; an explicitly given budget still applies
    (the budget's own tests, tests/test_geodesics_trained.py, pass theirs)."""
    from latentgeo.geodesics import connecting

    check = connecting._check_budget

    def lifted(budget):
        return None if budget == 1.0 else check(budget)

    monkeypatch.setattr(connecting, "_check_budget", lifted)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: one thread is as fast, and far faster on a busy machine. A test module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the previous count is restored after it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
