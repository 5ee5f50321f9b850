"""Shared test setup: keep every cache (prepared corpora, measured peaks) out of ~/.cache."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set at import time so subprocesses the tests start (the `lab` CLI) inherit it too; one
# folder for the whole session so the bundled corpus is tokenised once.
os.environ.setdefault("LAB_CACHE_DIR", tempfile.mkdtemp(prefix="lab-test-cache-"))


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
