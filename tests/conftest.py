"""Shared fixtures in two tiers.

Real data (../shared, or EDGE_SHARED; Fashion-MNIST): ``food11_test``, ``reference_labels``, ``hw7``,
``ta_student``, ``fashion_mnist``. A test that uses one of them is marked ``real_data`` (here, at
collection) and skips with the reason when the data is absent; ``pytest -m "not real_data"`` runs
the core tier alone. A parametrized fixture that reaches real data through
``request.getfixturevalue`` marks that parameter itself: ``pytest.param("ta", marks=pytest.mark.real_data)``.

Synthetic stand-ins (seeded, built once per session in a temporary folder, any clone):
``synthetic_food11`` (a Food-11 root: validation/<class>_<n>.jpg, testing/NNNN.jpg,
reference_labels.csv), ``synthetic_photos`` (its testing/), ``synthetic_labels`` (its CSV),
``synthetic_student`` (an edge checkpoint of a tiny StudentNet with trained-looking BatchNorm, 32-px
crop, Food-11's classes), ``synthetic_student_pickle`` (the same weights as the homework's 8-bit
pickle), ``synthetic_student_onnx`` (its fp32 ONNX export) and ``synthetic_homework_bin`` (a
full-size homework StudentNet state dict saved as the TA's student is).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))
FOOD11_TEST = SHARED / "food11" / "testing"
REFERENCE_LABELS = SHARED / "food11" / "reference_labels.csv"
HW7 = SHARED / "hw7"
FASHION_MNIST = Path(os.environ.get("EDGE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
REAL_DATA_FIXTURES = {"food11_test", "reference_labels", "hw7", "ta_student", "fashion_mnist"}


def _import_studies() -> None:
    """Make the repository's studies/ (one-off scripts, not installed) importable as ``studies`` for the tests
    that check their pure functions, without putting the repository root (and its export/ and bench/ folders,
    installed as ``edge.export`` / ``edge.bench``) on the path."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("studies", REPO / "studies" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "studies")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["studies"] = module
    spec.loader.exec_module(module)


_import_studies()


def pytest_collection_modifyitems(items):
    """Mark every test that asks for real data (directly or through another fixture) ``real_data``."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder: ../shared, or set EDGE_SHARED)")
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


# ---------------------------------------------------------------- synthetic tier

@pytest.fixture(scope="session")
def synthetic_food11(tmp_path_factory) -> Path:
    from synthetic import write_food11

    return write_food11(tmp_path_factory.mktemp("food-11"))


@pytest.fixture(scope="session")
def synthetic_photos(synthetic_food11) -> Path:
    return synthetic_food11 / "testing"


@pytest.fixture(scope="session")
def synthetic_labels(synthetic_food11) -> Path:
    return synthetic_food11 / "reference_labels.csv"


SYNTHETIC_CONFIG_ARGS = dict(widths=(8, 16, 24, 32), pools=(0, 1, 2, 3), input_size=32, num_classes=11)


@pytest.fixture(scope="session")
def synthetic_student(tmp_path_factory) -> Path:
    from edge.io.checkpoints import save_checkpoint
    from edge.core.config import FOOD11_CLASSES, ModelCard, Preprocess, StudentConfig
    from synthetic import trained_like

    config = StudentConfig(**SYNTHETIC_CONFIG_ARGS)
    path = tmp_path_factory.mktemp("synthetic_student") / "student.pt"
    save_checkpoint(path, ModelCard(config, Preprocess(crop=32), FOOD11_CLASSES), trained_like(config))
    return path


@pytest.fixture(scope="session")
def synthetic_student_pickle(synthetic_student) -> Path:
    from edge.io.checkpoints import load_checkpoint, save_homework_pickle

    path = synthetic_student.with_name("student_8bit.pkl")
    save_homework_pickle(path, load_checkpoint(synthetic_student).state, bits=8)
    return path


@pytest.fixture(scope="session")
def synthetic_student_onnx(synthetic_student) -> Path:
    from click.testing import CliRunner

    from edge.cli import main

    path = synthetic_student.with_name("student_fp32.onnx")
    result = CliRunner().invoke(main, ["export", str(synthetic_student), "--quant", "fp32", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def synthetic_homework_bin(tmp_path_factory) -> Path:
    import torch

    from edge.core.config import StudentConfig
    from synthetic import trained_like

    path = tmp_path_factory.mktemp("synthetic_homework") / "student_custom_small.bin"
    torch.save({k: torch.as_tensor(v) for k, v in trained_like(StudentConfig(), seed=1).items()}, path)
    return path
