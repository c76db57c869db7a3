"""edge.data.preprocess: pixel-exact homework preprocessing (on synthetic photos everywhere, on the real
photos too where ../shared is present), every image mode, the libjpeg-turbo fast path against
Pillow, truncated and undecodable files, and a fuzz of the loader."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from edge.data import preprocess
from edge.core.config import Preprocess
from edge.data.preprocess import ImageError, TruncatedImageWarning, center_crop, load_image, read_image, to_array

HOMEWORK = Preprocess()


def torchvision_reference(path: Path, crop: int = 256) -> np.ndarray:
    """The homework's pipeline: PIL open (no EXIF rotation), RGB, CenterCrop, ToTensor."""
    with Image.open(path) as image:
        return _torchvision(image.convert("RGB"), crop)


def _torchvision(image: Image.Image, crop: int = 256) -> np.ndarray:
    import torchvision.transforms as T

    return T.Compose([T.CenterCrop(crop), T.ToTensor()])(image).numpy()


@pytest.fixture(scope="module")
def photos(synthetic_photos) -> list[Path]:
    return sorted(synthetic_photos.glob("*.jpg"))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.real_data)])
def photo_set(request, photos) -> list[Path]:
    """The synthetic JPEGs, or the 497 real test photos."""
    if request.param == "synthetic":
        return photos
    real = sorted(request.getfixturevalue("food11_test").glob("*.jpg"))
    assert len(real) > 400
    return real


@pytest.fixture
def torch_one_thread():
    """ToTensor on small images is 20x slower with torch's thread pool on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_photo_decodes_as_pillow_and_preprocesses_as_torchvision(photo_set, torch_one_thread):
    """Whole decoded image == Pillow's, the array == the homework's tensor, bit for bit."""
    turbo = preprocess.simplejpeg is not None
    for path in photo_set:
        with Image.open(path) as image:
            reference = image.convert("RGB")
        pixels = preprocess._decode_turbo(path.read_bytes()) if turbo else read_image(path, HOMEWORK)[0]
        assert pixels is not None, f"{path.name}: the libjpeg-turbo path refused a clean photo"
        assert np.array_equal(pixels, np.asarray(reference)), path.name
        assert np.array_equal(to_array(pixels, HOMEWORK), _torchvision(reference)), path.name


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("width,height", [(512, 384), (257, 300), (256, 256), (255, 260), (100, 51), (1, 1),
                                          (600, 90), (301, 1000)])
def test_crop_offsets_and_zero_padding_match_torchvision(tmp_path, torch_one_thread, width, height):
    path = _save(_noise(width, height), tmp_path / "x.png")
    assert np.array_equal(load_image(path, HOMEWORK), torchvision_reference(path))


def test_center_crop_is_a_view_when_no_padding_is_needed():
    pixels = np.zeros((384, 512, 3), np.uint8)
    assert np.shares_memory(center_crop(pixels, 256), pixels)


@pytest.mark.parametrize("mode,name,kwargs", [
    ("L", "gray.jpg", {"quality": 90}),
    ("CMYK", "cmyk.jpg", {"quality": 90}),
    ("RGB", "upper.JPG", {"quality": 85}),
    ("RGB", "progressive.jpeg", {"progressive": True}),
    ("RGBA", "alpha.png", {}),
    ("P", "palette.gif", {}),
    ("L", "gray.PNG", {}),
    ("RGB", "plain.bmp", {}),
    ("RGB", "photo.webp", {"quality": 80}),
])
def test_every_mode_matches_torchvision(tmp_path, photos, torch_one_thread, mode, name, kwargs):
    with Image.open(photos[0]) as photo:
        path = _save(photo.convert(mode), tmp_path / name, **kwargs)
    assert np.array_equal(load_image(path, HOMEWORK), torchvision_reference(path))


def test_exif_rotation_is_not_applied_unless_the_model_asks(tmp_path, photos):
    with Image.open(photos[0]) as photo:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        path = _save(photo.crop((0, 0, 400, 300)), tmp_path / "rotated.jpg", exif=exif, quality=90)
    assert np.array_equal(load_image(path, HOMEWORK), torchvision_reference(path))
    upright, _ = read_image(path, Preprocess(exif_transpose=True))
    assert upright.shape == (400, 300, 3)


def test_truncated_jpeg_is_decoded_as_far_as_it_goes_with_a_warning(tmp_path, photos):
    photo = next(p for p in photos if not Image.open(p).info.get("progressive"))
    data = photo.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.warns(TruncatedImageWarning, match="cut.jpg"):
        cut = load_image(path, HOMEWORK)
    whole = torchvision_reference(photo)
    same_rows = np.all(cut == whole, axis=(0, 2))
    assert same_rows[:64].all() and not same_rows.all()  # the top decoded exactly, the missing end differs


@pytest.mark.parametrize("name,content", [
    ("empty.jpg", b""),
    ("text.jpg", b"Id,label\n0,3\n"),
    ("header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    ("random.png", bytes(range(256)) * 8),
])
def test_undecodable_files_raise_image_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=name):
        load_image(path, HOMEWORK)


def test_unreadable_paths_raise_image_error_naming_the_path(tmp_path):
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "folder.jpg").mkdir()
    for name in ("broken.jpg", "folder.jpg"):
        with pytest.raises(ImageError, match=f"{name}: cannot read"):
            load_image(tmp_path / name, HOMEWORK)


def _small_jpeg(photos: list[Path], progressive: bool) -> bytes:
    with Image.open(photos[1]) as photo:
        out = io.BytesIO()
        photo.resize((48, 40)).save(out, "JPEG", quality=80, progressive=progressive)
        return out.getvalue()


@pytest.fixture(scope="module")
def seeds(photos) -> list[bytes]:
    png = io.BytesIO()
    _noise(40, 30).save(png, "PNG")
    return [_small_jpeg(photos, False), _small_jpeg(photos, True), png.getvalue()]


@st.composite
def corrupted(draw, seeds: list[bytes]):
    """A real small image with random bytes overwritten, cut short, or spliced in."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["set", "cut", "insert"]))
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def test_fuzzed_images_load_or_raise_image_error_and_never_hang(tmp_path, seeds):
    path = tmp_path / "fuzz.jpg"
    small = Preprocess(crop=32)
    outcomes = set()

    @settings(max_examples=300, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(corrupted(seeds))
    def check(data):
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                array = load_image(path, small)
            except ImageError as err:
                assert "fuzz.jpg" in str(err)
                outcomes.add("refused")
                return
        outcomes.add("decoded")
        assert array.shape == (3, 32, 32) and array.dtype == np.float32
        assert 0.0 <= array.min() and array.max() <= 1.0

    check()
    assert outcomes == {"refused", "decoded"}


def test_fuzzed_jpegs_that_libjpeg_turbo_accepts_decode_as_pillow_does(seeds):
    pytest.importorskip("simplejpeg", reason="simplejpeg (the libjpeg-turbo fast path) is not installed")

    accepted = []

    @settings(max_examples=300, deadline=5000, database=None)
    @given(corrupted(seeds[:2]))
    def check(data):
        fast = preprocess._decode_turbo(data)
        if fast is not None:
            accepted.append(data)
            with Image.open(io.BytesIO(data)) as image:
                assert np.array_equal(fast, np.asarray(image.convert("RGB")))

    check()
    assert accepted  # some corruptions (e.g. in the entropy-coded data) still decode cleanly
