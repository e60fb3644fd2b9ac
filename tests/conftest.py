"""Shared test setup: small, single-threaded torch (CI runs tests in parallel on 2 cores)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker, inherited by the subprocesses tests start, so that runs compared across
    # processes (resume tests) do the same float arithmetic.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def plugins():
    """The installed plugins (built-ins through their entry points), loaded fresh for each test."""
    from slotrun.plugins import load_plugins

    loaded = load_plugins()
    assert not loaded.failures, [str(f) for f in loaded.failures]
    return loaded


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only contend on the shared CI cores (also when run without xdist)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
