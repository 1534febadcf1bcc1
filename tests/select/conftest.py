"""Fixtures of the selector tests: one tiny synthetic dataset per test module (read-only use)."""

from __future__ import annotations

import pytest

from tests.select.synth import tiny_data


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A tiny synthetic dataset shared by the tests of one module; tests must not modify it."""
    return tiny_data(tmp_path_factory.mktemp("synth"))
