"""Shared fixtures: the real data in ../shared (skipped with a clear reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))
FOOD11_TEST = SHARED / "food11" / "testing"
REFERENCE_LABELS = SHARED / "food11" / "reference_labels.csv"
HW7 = SHARED / "hw7"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder ../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def food11_test() -> Path:
    return _need(FOOD11_TEST)


@pytest.fixture(scope="session")
def reference_labels() -> Path:
    return _need(REFERENCE_LABELS)


@pytest.fixture(scope="session")
def hw7() -> Path:
    return _need(HW7)


@pytest.fixture(scope="session")
def ta_student(hw7) -> Path:
    return _need(hw7 / "student_custom_small.bin")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST} (apt-get install -y dataset-fashion-mnist)")
    return FASHION_MNIST
