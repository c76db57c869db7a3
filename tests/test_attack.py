"""`edge attack`: FGSM / iterative FGSM maths on tiny seeded StudentNets, the defense table, the
8-bit PNGs, the ONNX rebuild, the report's schema; and a few photos (synthetic with a seeded
homework-size student everywhere, real with the TA's student where ../shared is present), scored
independently with the homework's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from edge.workflows.attack import Epsilon, PixelModel, fgsm, ifgsm, parse_eps, save_pngs, to_pixels
from edge.io.checkpoints import save_checkpoint
from edge.cli import main
from edge.core.config import StudentConfig
from edge.data.folders import Sample
from edge.workflows.defenses import DefenseError, parse_defenses
from edge.models.student import build_student
from edge.io.checkpoints import init_checkpoint

TINY = StudentConfig(widths=(6, 8, 8), pools=(0, 1), input_size=16, num_classes=3)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    checkpoint = init_checkpoint(TINY, seed=3)
    return checkpoint, PixelModel(build_student(TINY, checkpoint.state), checkpoint.card)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(20, 236, (12, 3, 16, 16), dtype=np.uint8))
    return pixels, torch.from_numpy(rng.integers(0, 3, 12))


def _loss(model, pixels, labels) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(pixels.float() / 255), labels, reduction="sum"))


def test_fgsm_moves_every_pixel_by_exactly_eps_after_rounding(tiny, batch):
    model, (pixels, labels) = tiny[1], batch
    budgets = parse_eps("1/255,2/255,8/255")
    for eps, adversarial in fgsm(model, pixels, labels, budgets).items():
        change = adversarial.int() - pixels.int()
        assert adversarial.dtype == torch.uint8
        assert int(change.abs().max()) == eps.levels == round(eps.value * 255)
        assert float((change.abs() == eps.levels).float().mean()) > 0.99  # sign(grad) is 0 almost nowhere


def test_rounding_keeps_linf_within_eps_and_pixels_in_range():
    original = torch.tensor([[0, 1, 128, 254, 255]], dtype=torch.uint8)
    eps = Epsilon("0.01", 0.01)  # 2.55 levels: at most 2 whole steps fit
    pushed = to_pixels(original.float() / 255 + torch.tensor([-1.0, 1.0, 0.0101, 1.0, 1.0]), original, eps)
    assert pushed.tolist() == [[0, 3, 130, 255, 255]]
    assert eps.levels == 2


def test_eps_list_parses_fractions_and_refuses_sub_pixel_budgets():
    assert [e.levels for e in parse_eps("8/255, 1/255,2/255,0.0078431373")] == [1, 2, 8]
    for bad in ("0.5/255", "2", "x", ""):
        with pytest.raises(ValueError):
            parse_eps(bad)


def test_fgsm_increases_the_loss_and_ifgsm_is_at_least_as_strong(tiny, batch):
    model, (pixels, labels) = tiny[1], batch
    clean = _loss(model, pixels, labels)
    for eps in parse_eps("1/255,4/255"):
        one_step = _loss(model, fgsm(model, pixels, labels, (eps,))[eps], labels)
        iterative = _loss(model, ifgsm(model, pixels, labels, eps, steps=8), labels)
        assert one_step > clean
        assert iterative >= one_step


def test_defense_table_parses_once_and_names_errors():
    defenses = parse_defenses("gaussian:1.5, median:3,JPEG:75,bits:4,gaussian:1.50")
    assert [d.name for d in defenses] == ["gaussian:1.5", "median:3", "jpeg:75", "bits:4"]
    assert parse_defenses("") == ()
    for bad, words in (("blur:2", "unknown defense"), ("median:4", "odd window"), ("jpeg:0", "quality"),
                       ("bits:x", "bit depth"), ("gaussian", "sigma")):
        with pytest.raises(DefenseError, match=words):
            parse_defenses(bad)


def test_defenses_keep_shape_and_range_and_do_what_they_say():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 24, 24)).astype(np.float32) / 255)
    flat = torch.full((1, 3, 24, 24), 153 / 255)  # on both the 8-bit and the 4-bit grid
    for defense in parse_defenses("gaussian:1.5,median:3,jpeg:75,bits:4"):
        y = defense(x)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert torch.allclose(defense(flat), flat, atol=1 / 255 + 1e-6)  # a flat image stays (nearly) flat
    assert len(torch.unique(parse_defenses("bits:2")[0](x))) <= 4
    assert float(parse_defenses("gaussian:1.5")[0](x).std()) < 0.5 * float(x.std())


def test_saved_pngs_reload_to_the_same_pixels(tmp_path, batch):
    pixels = batch[0][:3]
    samples = [Sample(str(i), Path(f"/photos/{i:04d}.jpg")) for i in range(3)]
    save_pngs(tmp_path / "fgsm-eps2", samples, pixels)
    for i in range(3):
        reloaded = np.asarray(Image.open(tmp_path / "fgsm-eps2" / f"{i:04d}.png"))
        np.testing.assert_array_equal(reloaded, pixels[i].permute(1, 2, 0).numpy())


def test_onnx_rebuild_in_torch_matches_onnx_runtime(tiny, tmp_path):
    from edge.inference.onnx_torch import torch_from_onnx
    from edge.inference.runtime import OnnxClassifier
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec

    path = tmp_path / "tiny_uint4.onnx"
    export_onnx(tiny[0], path, QuantSpec("uint4", per_channel=True, method="minmax"))
    x = np.random.default_rng(2).random((4, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        rebuilt = torch_from_onnx(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rebuilt, OnnxClassifier(path)(x), atol=1e-4)


def _photos(folder: Path, count: int = 9) -> Path:
    rng = np.random.default_rng(4)
    for i in range(count):
        (folder / str(i % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(folder / str(i % 3) / f"{i:04d}.png")
    return folder


def _run(*args):
    return CliRunner().invoke(main, ["attack", *map(str, args)])


def test_cli_report_schema_files_and_output_checks(tiny, tmp_path):
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, tiny[0].card, tiny[0].state)
    onnx_path = tmp_path / "tiny_uint8.onnx"
    export_onnx(tiny[0], onnx_path, QuantSpec("uint8", method="minmax"))
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()
    args = [checkpoint, onnx_path, photos, "--eps", "1/255,8/255", "--method", "fgsm,ifgsm", "--steps", "2",
            "--defense", "gaussian:1.5,bits:4", "--source", checkpoint, "--save-adversarial", out / "adv",
            "--json", out / "r.json", "--markdown", out / "r.md", "--plot", out / "r.png", "--batch", "4", "--quiet"]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "r.json").read_text())
    assert set(doc["models"]) == {"tiny.pt", "tiny_uint8.onnx"}
    for name, report in doc["models"].items():
        assert set(report["clean"]) == {"accuracy", "defenses"} and 0 <= report["clean"]["accuracy"] <= 1
        kinds = {(r["attack"], r["method"], r["eps_text"]) for r in report["attacks"]}
        expected = {("white-box", m, e) for m in ("fgsm", "ifgsm") for e in ("1/255", "8/255")}
        assert kinds == expected | ({(("transfer",) + k[1:]) for k in expected} if name.endswith(".onnx") else set())
        for row in report["attacks"]:
            assert {"method", "eps", "accuracy", "success_rate", "linf", "defenses"} <= set(row)
            assert row["linf"] <= row["eps"] + 1e-9
            assert set(row["defenses"]) == {"gaussian:1.5", "bits:4"}
            for name_, cell in row["defenses"].items():
                assert set(cell) == {"accuracy", "clean_accuracy"}
                assert cell["clean_accuracy"] == report["clean"]["defenses"][name_]
    assert sorted(p.name for p in (out / "adv" / "tiny.pt" / "fgsm-eps8").iterdir()) == \
        [f"{i:04d}.png" for i in range(9)]
    assert "| white-box | fgsm | 1/255 |" in (out / "r.md").read_text()
    assert (out / "r.png").stat().st_size > 0 and (out / "r-examples.png").stat().st_size > 0
    again = _run(*args)
    assert again.exit_code == 2 and "pass --overwrite" in again.output
    bad = _run(checkpoint, photos, "--defense", "blur:2", "--quiet")
    assert bad.exit_code == 2 and "unknown defense 'blur:2'" in bad.output
    onto_data = _run(checkpoint, photos, "--save-adversarial", photos, "--quiet")
    assert onto_data.exit_code == 2 and "overlaps the data folder" in onto_data.output


def _attack_eight_photos(student: Path, photos: Path, labels: Path, out: Path) -> tuple[float, dict]:
    """FGSM 2/255 on the first 8 photos, the saved PNGs scored by the homework's code as edge did:
    edge's attacked accuracy and its report."""
    from studies.attack_check import reported_accuracy, score_pngs

    result = _run(student, photos, "--labels", labels, "--limit", "8", "--method", "fgsm", "--eps", "2/255",
                  "--defense", "gaussian:1.5", "--save-adversarial", out / "adv", "--json", out / "r.json", "--quiet")
    assert result.exit_code == 0, result.output
    ours = reported_accuracy(out / "r.json", "fgsm", "2/255", None)
    theirs = score_pngs(out / "adv" / "fgsm-eps2", student, photos, labels)
    print(f"FGSM 2/255 on 8 photos: edge {ours:.3f}, independent {theirs['accuracy']:.3f}")
    assert theirs["images"] == 8 and theirs["max_linf_255"] == 2
    assert abs(theirs["accuracy"] - ours) <= 1 / 8
    return ours, json.loads((out / "r.json").read_text())


def test_real_photos_independent_pipeline_agrees(ta_student, food11_test, reference_labels, tmp_path):
    """FGSM 2/255 on 8 real photos: the homework's own code scores the saved PNGs as edge does."""
    ours, report = _attack_eight_photos(ta_student, food11_test, reference_labels, tmp_path)
    assert ours <= 0.5 < report["clean"]["accuracy"]


def test_synthetic_photos_independent_pipeline_agrees(synthetic_homework_bin, synthetic_photos, tmp_path):
    """The same on 8 synthetic photos with a seeded homework-size student, labelled by the homework
    code's own clean predictions: edge must find every one of them correct before the attack."""
    from torchvision import transforms

    from studies.attack_check import homework_model

    model, homework = homework_model(synthetic_homework_bin), transforms.Compose([transforms.CenterCrop(256),
                                                                                  transforms.ToTensor()])
    photos = sorted(synthetic_photos.glob("*.jpg"))[:8]
    with torch.no_grad():
        clean = [int(model(homework(Image.open(p).convert("RGB"))[None]).argmax(1)) for p in photos]
    labels = tmp_path / "labels.csv"
    labels.write_text("Id,label\n" + "".join(f"{int(p.stem)},{c}\n" for p, c in zip(photos, clean)))
    _, report = _attack_eight_photos(synthetic_homework_bin, synthetic_photos, labels, tmp_path)
    assert report["clean"]["accuracy"] == 1.0


def test_group_baseline_checkpoint_and_onnx_are_attackable(tmp_path):
    """The group-conv baseline: its channel shuffles (Reshape/Transpose) rebuild in torch too."""
    from edge.workflows.attack import open_target
    from edge.core.config import FOOD11_CLASSES, Preprocess
    from edge.io.netfile import NetFile, save_net
    from edge.models.registry import NetSpec, build_net
    from edge.io.checkpoints import load_model
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec

    torch.manual_seed(5)
    spec = NetSpec("group", StudentConfig(widths=(8, 8, 16), pools=(0, 1), input_size=16), 2)
    save_net(tmp_path / "group.pt", NetFile(spec, Preprocess(crop=16), FOOD11_CLASSES, build_net(spec).state_dict()))
    export_onnx(load_model(tmp_path / "group.pt"), tmp_path / "group.onnx", QuantSpec("uint8", method="minmax"))
    pixels = torch.from_numpy(np.random.default_rng(6).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8))
    x = pixels.numpy().astype(np.float32) / 255
    torch_target, onnx_target = open_target(tmp_path / "group.pt"), open_target(tmp_path / "group.onnx")
    with torch.no_grad():
        rebuilt = onnx_target.white_box(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rebuilt, onnx_target.score(x), atol=1e-4)
    np.testing.assert_allclose(torch_target.score(x), onnx_target.score(x), atol=0.05)
    eps = parse_eps("2/255")[0]
    adversarial = fgsm(onnx_target.white_box, pixels, torch.zeros(4, dtype=torch.int64), (eps,))[eps]
    assert int((adversarial.int() - pixels.int()).abs().max()) == 2


def test_int8_qdq_export_is_scored_on_the_transfer_attack_only(tiny, tmp_path):
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, tiny[0].card, tiny[0].state)
    export_onnx(tiny[0], tmp_path / "tiny_int8.onnx", QuantSpec("int8"))
    photos = _photos(tmp_path / "photos", count=3)
    alone = _run(tmp_path / "tiny_int8.onnx", photos, "--method", "fgsm", "--quiet")
    assert alone.exit_code == 2 and "cannot rebuild ops" in alone.output
    result = _run(tmp_path / "tiny_int8.onnx", photos, "--method", "fgsm", "--eps", "2/255", "--source", checkpoint,
                  "--defense", "", "--json", tmp_path / "r.json", "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())["attacks"]
    assert [(r["attack"], r["method"], r["eps_text"]) for r in rows] == [("transfer", "fgsm", "2/255")]


def test_example_grid_shows_each_photos_true_label(tiny, tmp_path, monkeypatch):
    import edge.workflows.attack_report as attack_report
    from synthetic import text_outside_figure

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, tiny[0].card, tiny[0].state)
    photos = _photos(tmp_path / "photos")  # class subfolders 0, 1, 2: the labels come from the folders
    figures, real_save = [], attack_report._save_figure

    def keep_titles(fig, path, photos=False):
        if photos:
            figures.append(([ax.get_title() for ax in fig.axes], text_outside_figure(fig)))
        real_save(fig, path, photos)

    monkeypatch.setattr(attack_report, "_save_figure", keep_titles)
    result = _run(checkpoint, photos, "--eps", "2/255", "--method", "fgsm", "--plot", tmp_path / "r.png", "--quiet")
    assert result.exit_code == 0, result.output
    (titles, problems), = figures
    from edge.data.folders import list_samples

    classes = tiny[0].card.classes
    originals = [t for t in titles if ": original" in t]
    assert len(originals) == 3 and problems == []
    first = list_samples(photos, classes)[:3]  # the grid's photos: the first batch's first three
    assert [t.split("\n")[1] for t in originals] == [f"true label: {classes[s.label]}" for s in first]
