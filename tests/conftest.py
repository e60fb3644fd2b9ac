"""Shared test setup: small, single-threaded torch (CI runs tests in parallel on 2 cores)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def plugins():
    """The installed plugins (built-ins through their entry points), loaded fresh for each test."""
    from slotrun.plugins import load_plugins

    loaded = load_plugins()
    assert not loaded.failures, [str(f) for f in loaded.failures]
    return loaded
