"""edge.data.folders: ids parsed robustly from real-world file names, duplicates refused, unusable folders
and label files explained."""

from __future__ import annotations

import pytest

from edge.data.folders import DatasetError, list_samples, read_labels


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8")
    return folder


def test_ids_from_food11_names_in_numeric_order(tmp_path):
    folder = _touch(tmp_path / "testing", "0010.jpg", "0002.JPG", "1.jpeg", "0000.Png", "notes.txt", ".hidden.jpg")
    samples = list_samples(folder)
    assert [s.id for s in samples] == ["0", "1", "2", "10"]
    assert [s.path.name for s in samples] == ["0000.Png", "1.jpeg", "0002.JPG", "0010.jpg"]


def test_odd_names_are_kept_as_ids_without_crashing(tmp_path):
    folder = _touch(tmp_path / "t", "\u0661\u0662.jpg", "\u00b2.jpg", "12a.jpg", "img_7.jpg", "3.jpg")
    ids = [s.id for s in list_samples(folder)]
    assert sorted(ids) == sorted(["\u0661\u0662", "\u00b2", "12a", "img_7", "3"])
    assert ids[0] == "3"  # numbers first, then names


def test_labelled_food11_names_carry_their_class(tmp_path):
    samples = list_samples(_touch(tmp_path / "validation", "3_12.jpg", "10_0.jpg"))
    assert [(s.id, s.label) for s in samples] == [("3_12", 3), ("10_0", 10)]


@pytest.mark.parametrize("names", [("1.jpg", "0001.jpg"), ("5.jpg", "5.png"), ("7.jpg", "7.JPG")])
def test_duplicate_ids_are_an_error_naming_both_files(tmp_path, names):
    with pytest.raises(DatasetError, match="duplicate image ids") as err:
        list_samples(_touch(tmp_path / "t", *names))
    assert all(name in str(err.value) for name in names)


def test_folder_problems_say_what_is_there(tmp_path):
    _touch(tmp_path / "data" / "training", "0_1.jpg")
    with pytest.raises(DatasetError, match=r"testing: no such folder; .*data holds training/"):
        list_samples(tmp_path / "data" / "testing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found.*is empty"):
        list_samples(tmp_path / "empty")
    _touch(tmp_path / "docs", "readme.txt")
    with pytest.raises(DatasetError, match="no images found.*holds readme.txt"):
        list_samples(tmp_path / "docs")
    with pytest.raises(DatasetError, match="not a folder"):
        list_samples(tmp_path / "docs" / "readme.txt")


def test_broken_links_are_listed_to_be_reported_not_silently_dropped(tmp_path):
    folder = _touch(tmp_path / "t", "1.jpg")
    (folder / "2.jpg").symlink_to(tmp_path / "missing.jpg")
    (folder / "3.jpg").mkdir()
    assert [s.id for s in list_samples(folder)] == ["1", "2"]


def _csv(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding=encoding)
    return path


def test_labels_csv_with_bom_spaces_and_extra_columns(tmp_path):
    path = _csv(tmp_path, "Id , label,votes\n0007, 3 ,9\n12,10,5\n", encoding="utf-8-sig")
    assert read_labels(path, num_classes=11) == {"7": 3, "12": 10}


@pytest.mark.parametrize("text,problem", [
    ("Id,label\n1,3\n01,4\n", "line 3: id 1 again"),
    ("Id,label\n1,cat\n", "line 2: label 'cat' is not a class index"),
    ("Id,label\n1,11\n", r"line 2: label '11' is not a class index \(the model has classes 0..10\)"),
    ("Image,class\n1,2\n", "expected a CSV with columns Id,label"),
    ("", "expected a CSV with columns Id,label"),
])
def test_bad_label_files_are_explained(tmp_path, text, problem):
    with pytest.raises(DatasetError, match=problem):
        read_labels(_csv(tmp_path, text), num_classes=11)


def test_real_reference_labels(reference_labels):
    labels = read_labels(reference_labels, num_classes=11)
    assert len(labels) > 400 and set(labels.values()) <= set(range(11))
