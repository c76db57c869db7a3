"""`edge predict` end to end: ids and CSV, bad input, output safety, hostile model files,
determinism across threads and batches, no torch on the ONNX path, memory that does not grow.

A tiny seeded StudentNet on 32-px crops of synthetic photos runs everywhere (the conftest's
``synthetic_*`` fixtures); the TA's student (exported to ONNX) on the real photos runs as well
where ../shared is present, where its predictions matter.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from synthetic import save_sealed

REPO = Path(__file__).resolve().parents[1]


def export(checkpoint: Path, out: Path, quant: str) -> Path:
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--quant", quant, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ta_onnx(ta_student, tmp_path_factory) -> Path:
    """fp32 weights: the same graph at run time as uint8 (dequantized at load), minus calibration time."""
    return export(ta_student, tmp_path_factory.mktemp("models") / "ta.onnx", "fp32")


@pytest.fixture(scope="module")
def photos(synthetic_photos) -> list[Path]:
    return sorted(synthetic_photos.glob("*.jpg"))


def _ta_and_real_photos(request) -> tuple[Path, list[Path]]:
    return request.getfixturevalue("ta_onnx"), sorted(request.getfixturevalue("food11_test").glob("*.jpg"))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("ta", marks=pytest.mark.real_data)])
def model_and_photos(request) -> tuple[Path, list[Path]]:
    """The tiny model on the synthetic photos, or the TA's student on the real ones."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_student_onnx"), request.getfixturevalue("photos")
    return _ta_and_real_photos(request)


@pytest.fixture(scope="module", params=["synthetic", pytest.param("ta", marks=pytest.mark.real_data)])
def full_size_model_and_photos(request, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A homework-size model (slow enough to be stopped mid-run) on the synthetic or the real photos."""
    if request.param == "synthetic":
        model = export(request.getfixturevalue("synthetic_homework_bin"),
                       tmp_path_factory.mktemp("models") / "homework_size.onnx", "fp32")
        return model, request.getfixturevalue("photos")
    return _ta_and_real_photos(request)


def link_photos(photos: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    return folder


def predict(*args, **kwargs):
    result = CliRunner().invoke(main, ["predict", *map(str, args), "--quiet"], **kwargs)
    assert not isinstance(result.exception, AssertionError) and "Traceback" not in result.output, result.output
    return result


def rows(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["Id", "label"]
        return [(i, int(label)) for i, label in reader]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _agreement(result) -> tuple[float, int]:
    found = re.search(r"agreement with reference_labels.csv: ([\d.]+)% of (\d+)", result.stderr)
    return float(found.group(1)), int(found.group(2))


def test_the_real_test_photos_are_predicted_in_id_order(ta_onnx, food11_test, reference_labels, tmp_path):
    out = tmp_path / "pred.csv"
    result = predict(ta_onnx, food11_test, "-o", out, "--labels", reference_labels)
    assert result.exit_code == 0, result.output
    assert [i for i, _ in rows(out)] == [str(int(p.stem)) for p in sorted(food11_test.glob("*.jpg"))]
    assert {label for _, label in rows(out)} <= set(range(11))
    assert _agreement(result)[0] > 75 and _agreement(result)[1] == 497  # the TA's student scores ~81% on validation
    assert re.search(r"497 predictions \(CPUExecutionProvider\) in [\d.]+ s; CPU: decoding [\d.]+ s, inference [\d.]+ s",
                     result.stderr)  # bench/predict_throughput.py reads the split from this line


def test_photos_are_predicted_in_id_order_and_scored_against_the_labels(synthetic_student_onnx, synthetic_photos,
                                                                        synthetic_labels, photos, tmp_path):
    out = tmp_path / "pred.csv"
    result = predict(synthetic_student_onnx, synthetic_photos, "-o", out, "--labels", synthetic_labels)
    assert result.exit_code == 0, result.output
    predicted = rows(out)
    assert [i for i, _ in predicted] == [str(int(p.stem)) for p in photos]
    assert {label for _, label in predicted} <= set(range(11))
    with open(synthetic_labels, newline="") as f:
        truth = {str(int(row["Id"])): int(row["label"]) for row in csv.DictReader(f)}
    agreement = 100 * sum(truth[i] == label for i, label in predicted) / len(predicted)
    assert _agreement(result) == (pytest.approx(agreement, abs=0.01), len(photos))
    assert re.search(rf"{len(photos)} predictions \(CPUExecutionProvider\) in [\d.]+ s; CPU: decoding [\d.]+ s, "
                     r"inference [\d.]+ s", result.stderr)


def test_same_csv_bytes_across_runs_threads_batches_and_workers(model_and_photos, tmp_path):
    model, photos = model_and_photos
    folder = link_photos(photos[:37], tmp_path / "testing")
    outputs = []
    for i, opts in enumerate([("--threads", 1, "--batch", 8), ("--threads", 2, "--batch", 3, "--workers", 1),
                              ("--threads", 2, "--batch", 37), ("--threads", 1, "--batch", 8)]):
        out = tmp_path / f"{i}.csv"
        assert predict(model, folder, "-o", out, *opts).exit_code == 0
        outputs.append(out.read_bytes())
    assert len(set(outputs)) == 1 and len(rows(out)) == 37


def test_same_labels_with_intra_op_threads(model_and_photos):
    from edge.data.folders import list_samples
    from edge.inference.predict import predict_samples
    from edge.inference.runtime import OnnxClassifier

    model, photos = model_and_photos
    samples = list_samples(photos[0].parent)[:24]
    one, two = (predict_samples(OnnxClassifier(model, threads=t), samples, 6, progress=False) for t in (1, 2))
    assert np.array_equal(one.labels, two.labels) and len(one.labels) == 24


def test_a_homework_pickle_predicts_as_the_homeworks_own_code(synthetic_student_pickle, synthetic_photos, photos,
                                                              tmp_path):
    """`edge predict` on the homework's 8-bit pickle (the torch path) labels every photo as the
    homework's own decode8, StudentNet and CenterCrop(256) + ToTensor do."""
    import torch
    from torchvision import transforms

    from homework_reference import decode8, homework_student

    state = decode8(synthetic_student_pickle)
    stages = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("cnn.") and k.endswith(".3.weight"))
    widths = [len(state["cnn.0.0.weight"])] + [len(state[f"cnn.{i}.3.weight"]) for i in range(1, stages)]
    model = homework_student(widths=widths)
    model.load_state_dict(state)
    model.eval()
    homework = transforms.Compose([transforms.CenterCrop(256), transforms.ToTensor()])
    with torch.no_grad():
        expected = [(str(int(p.stem)), int(model(homework(Image.open(p).convert("RGB"))[None].float()).argmax(1)))
                    for p in photos]
    out = tmp_path / "pred.csv"
    assert predict(synthetic_student_pickle, synthetic_photos, "-o", out).exit_code == 0
    assert rows(out) == expected


def test_the_onnx_path_never_imports_torch_or_onnx(synthetic_student_onnx, photos, tmp_path):
    folder = link_photos(photos[:4], tmp_path / "testing")
    code = ("import sys; from click.testing import CliRunner; from edge.cli import main; "
            f"r = CliRunner().invoke(main, ['predict', {str(synthetic_student_onnx)!r}, {str(folder)!r}, '-o', "
            f"{str(tmp_path / 'o.csv')!r}, '--quiet']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnx', 'export', 'bench')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def bad_folder(photos, tmp_path) -> Path:
    folder = link_photos(photos[:5], tmp_path / "testing")
    (folder / "9001.jpg").write_text("Id,label\n")
    (folder / "9002.jpg").write_bytes(b"")
    (folder / "9003.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "9004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return folder


BAD = ("9001.jpg", "9002.jpg", "9003.jpg", "9004.png")


def test_bad_images_fail_the_run_naming_each_and_keep_the_old_csv(synthetic_student_onnx, bad_folder, tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("Id,label\nprevious,1\n")
    result = predict(synthetic_student_onnx, bad_folder, "-o", out, "--overwrite")
    assert result.exit_code == 2
    assert all(name in result.stderr for name in BAD) and "--skip-bad" in result.stderr
    assert out.read_text() == "Id,label\nprevious,1\n" and not leftovers(tmp_path)


def test_skip_bad_writes_every_good_row_and_lists_the_skipped(synthetic_student_onnx, bad_folder, photos, tmp_path):
    out = tmp_path / "pred.csv"
    result = predict(synthetic_student_onnx, bad_folder, "-o", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert [i for i, _ in rows(out)] == [str(int(p.stem)) for p in photos[:5]]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 4 and all(any(name in line for line in skipped) for name in BAD)


def test_every_format_and_a_truncated_jpeg_are_predicted(synthetic_student_onnx, photos, tmp_path):
    folder = tmp_path / "testing"
    folder.mkdir()
    with Image.open(photos[0]) as photo:
        photo.convert("L").save(folder / "1.jpg")
        photo.convert("CMYK").save(folder / "2.jpg")
        photo.save(folder / "3.png")
        photo.convert("RGBA").save(folder / "4.PNG")
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.save(folder / "5.JPG", exif=exif)
        photo.save(folder / "6.JPEG")
    data = photos[1].read_bytes()
    (folder / "7.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "pred.csv"
    result = predict(synthetic_student_onnx, folder, "-o", out)
    assert result.exit_code == 0, result.output
    assert [i for i, _ in rows(out)] == [str(i) for i in range(1, 8)]
    assert re.search(r"warning: .*7\.jpg: truncated JPEG", result.stderr)


@pytest.mark.parametrize("layout,message", [
    ("empty", "no images found"),
    ("no testing", r"testing: no such folder; .* holds training/"),
    ("a file", "not a folder"),
    ("duplicates", r"duplicate image ids: .*0001\.jpg.*1\.jpg|duplicate image ids: .*1\.jpg.*0001\.jpg"),
])
def test_unusable_folders_exit_2_with_the_reason(synthetic_student_onnx, photos, tmp_path, layout, message):
    root = tmp_path / "data"
    (root / "training").mkdir(parents=True)
    target = root / "testing"
    if layout == "empty":
        target.mkdir()
    elif layout == "a file":
        target.write_text("")
    elif layout == "duplicates":
        link_photos(photos[:1], target)
        shutil.copy(photos[0], target / "0001.jpg")
        shutil.copy(photos[0], target / "1.jpg")
    out = tmp_path / "pred.csv"
    result = predict(synthetic_student_onnx, target, "-o", out)
    assert result.exit_code == 2 and re.search(message, result.stderr), result.stderr
    assert not out.exists()


def test_missing_output_folder_fails_before_any_work(synthetic_student_onnx, photos, tmp_path):
    result = predict(synthetic_student_onnx, photos[0].parent, "-o", tmp_path / "nope" / "pred.csv")
    assert result.exit_code == 2 and "folder" in result.stderr and "does not exist" in result.stderr


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "edge", "predict", *map(str, args)]


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def test_a_write_that_fails_midway_leaves_the_old_csv_and_no_partial_file(synthetic_student_onnx, photos, tmp_path):
    folder = link_photos(photos[:30], tmp_path / "testing")
    out = tmp_path / "pred.csv"
    out.write_text("Id,label\nprevious,1\n")
    done = subprocess.run(_cli(synthetic_student_onnx, folder, "-o", out, "--quiet", "--overwrite"), capture_output=True, text=True,
                          cwd=REPO, timeout=120, preexec_fn=_limit_file_size)
    assert done.returncode == 2 and "pred.csv: cannot write (File too large)" in done.stderr, done.stderr
    assert out.read_text() == "Id,label\nprevious,1\n" and not leftovers(tmp_path)


def test_ctrl_c_mid_run_leaves_the_old_csv_and_no_partial_file(full_size_model_and_photos, tmp_path):
    model, photos = full_size_model_and_photos
    folder = tmp_path / "testing"
    folder.mkdir()
    count = max(len(photos), 400)
    for i in range(count):
        (folder / f"{i}.jpg").symlink_to(photos[i % len(photos)])
    out = tmp_path / "pred.csv"
    out.write_text("Id,label\nprevious,1\n")
    # a shell's background job starts with SIGINT ignored, which Python would keep: restore the default
    child = subprocess.Popen(_cli(model, folder, "-o", out, "--overwrite"), stderr=subprocess.PIPE, cwd=REPO,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = b""
    while not re.search(rb"\| *[1-9]\d*/%d" % count, progress):  # some batches are done
        chunk = os.read(child.stderr.fileno(), 4096)
        assert chunk, progress.decode()
        progress += chunk
    child.send_signal(signal.SIGINT)
    tail = child.communicate(timeout=60)[1]
    assert child.returncode == 130 and b"interrupted: no file was left half-written" in tail
    assert out.read_text() == "Id,label\nprevious,1\n" and not leftovers(tmp_path)


def _edited(synthetic_student_onnx: Path, tmp_path: Path, edit) -> Path:
    model = onnx.load(synthetic_student_onnx)
    edit(model)
    path = tmp_path / "edited.onnx"
    save_sealed(model, path)
    return path


def _card_edit(change):
    def edit(model):
        prop = next(p for p in model.metadata_props if p.key == "edge.card")
        card = json.loads(prop.value)
        change(card)
        prop.value = json.dumps(card)
    return edit


def _input_size(model, size):
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = size


MODEL_DAMAGE = {
    "truncated": (lambda m, tmp: _write(tmp / "cut.onnx", m.read_bytes()[: m.stat().st_size // 2]),
                  "not a loadable ONNX model"),
    "garbage": (lambda m, tmp: _write(tmp / "junk.onnx", os.urandom(3000)), "not a loadable ONNX model"),
    "empty": (lambda m, tmp: _write(tmp / "empty.onnx", b""), "not a loadable ONNX model"),
    "no metadata": (lambda m, tmp: _edited(m, tmp, lambda x: x.ClearField("metadata_props")),
                    "no 'edge.card' metadata"),
    "wrong input shape": (lambda m, tmp: _edited(m, tmp, lambda x: _input_size(x, 64)),
                          r"input shape .* does not match its metadata"),
    "class names != outputs": (lambda m, tmp: _edited(m, tmp, _card_edit(lambda c: c["classes"].pop())),
                               "10 class names for 11 outputs"),
    "outputs != classes": (lambda m, tmp: _edited(m, tmp, _card_edit(
        lambda c: (c["classes"].pop(), c["config"].update(num_classes=10)))), "does not match 10 classes"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_damaged_onnx_files_exit_2_naming_the_file(synthetic_student_onnx, photos, tmp_path, damage):
    make, message = MODEL_DAMAGE[damage]
    model = make(synthetic_student_onnx, tmp_path)
    result = predict(model, photos[0].parent, "-o", tmp_path / "pred.csv")
    assert result.exit_code == 2 and re.search(message, result.stderr) and model.name in result.stderr, result.stderr
    assert not (tmp_path / "pred.csv").exists()


class _Payload:
    """Unpickling this calls open(marker, "w"): a file appears if the loader runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("kind", ["homework pickle", "torch checkpoint"])
def test_model_files_that_try_to_run_code_are_refused_and_run_nothing(photos, tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = {"cnn.0.0.weight": _Payload(marker)}
    if kind == "homework pickle":
        evil = _write(tmp_path / "student.pkl", pickle.dumps(payload))
    else:
        import torch

        evil = tmp_path / "student.bin"
        torch.save(payload, evil)
    assert not marker.exists()
    result = predict(evil, photos[0].parent, "-o", tmp_path / "pred.csv")
    assert result.exit_code == 2 and "refused" in result.stderr and evil.name in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "pred.csv").exists()


def test_labels_outside_the_models_classes_exit_2(synthetic_student_onnx, photos, tmp_path):
    labels = _write(tmp_path / "labels.csv", b"Id,label\n0,11\n")
    result = predict(synthetic_student_onnx, photos[0].parent, "-o", tmp_path / "pred.csv", "--labels", labels)
    assert result.exit_code == 2 and "labels.csv, line 2: label '11'" in result.stderr


MEMORY_PROBE = """
import resource, sys
from edge.data.folders import list_samples
from edge.inference.predict import open_model, predict_samples

model, lanes = open_model(sys.argv[1])
samples = list_samples(sys.argv[2])
peaks = []
for count in (300, len(samples)):
    result = predict_samples(model, samples[:count], 8, 4, progress=False, lanes=lanes)
    assert len(result.labels) == count
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(*peaks)
"""


def test_memory_does_not_grow_with_the_number_of_images(synthetic_student_onnx, photos, tmp_path):
    """3,000 images (30 photos shrunk to 160x120, hard-linked) hold no more memory than 300:
    a pipeline that kept decoded images would add 3000 x 57 kB = 170 MB. (20,000 full-size: bench/.)"""
    folder = tmp_path / "many"
    folder.mkdir()
    for i, photo in enumerate(photos[:30]):
        with Image.open(photo) as image:
            image.resize((160, 120)).save(folder / f"{i}.jpg", quality=90)
    for i in range(30, 3000):
        os.link(folder / f"{i % 30}.jpg", folder / f"{i}.jpg")
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(synthetic_student_onnx), str(folder)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    first, last = map(int, done.stdout.split())
    assert last - first < 16 * 1024, f"peak RSS grew by {(last - first) / 1024:.0f} MB from 300 to 3000 images"
