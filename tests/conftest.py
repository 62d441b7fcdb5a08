"""Shared fixtures. Data from ../shared (validation runs, NCCL tables) is optional: tests that need
it skip cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture
def validation_dir(shared_dir: Path) -> Path:
    d = shared_dir / "validation" / "apex-h100x8"
    if not (d / "ground_truth.csv").is_file():
        pytest.skip("../shared/validation/apex-h100x8 is absent")
    return d
