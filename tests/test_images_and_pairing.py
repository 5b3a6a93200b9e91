import numpy as np
import pytest
from PIL import Image

from lesionseg.data.images import image_size, load_image, load_mask
from lesionseg.data.isic import pair_images_and_masks
from lesionseg.errors import DataError
from tests.helpers import lesion_pair, write_pair


@pytest.fixture
def rgb():
    return lesion_pair(0)[0]


def test_grayscale_rgba_palette_cmyk_become_rgb(tmp_path, rgb):
    cases = {
        "gray.png": Image.fromarray(rgb).convert("L"),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = np.asarray(load_image(tmp_path / name))
        assert out.shape == rgb.shape and out.dtype == np.uint8, name
        # Close to the original colours (gray loses hue; compare luminance order instead).
        assert abs(out.astype(float).mean() - rgb.astype(float).mean()) < 12, name


def test_16bit_image_is_scaled_not_clipped(tmp_path):
    values = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png"))
    assert out.shape == (48, 64, 3)
    assert out.min() == 0 and out.max() == 255 and 120 < out.mean() < 135


def test_exif_rotation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (48, 64)  # width, height swapped
    assert image_size(tmp_path / "rot.jpg") == (48, 64)


def test_not_an_image(tmp_path):
    (tmp_path / "ISIC_0000001.jpg").write_text("hello, I am text")
    with pytest.raises(DataError, match=r"ISIC_0000001.jpg: not a readable image"):
        load_image(tmp_path / "ISIC_0000001.jpg")


def test_truncated_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).resize((640, 480)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.jpg: corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    Image.new("L", (4000, 4000)).save(tmp_path / "bomb.png", optimize=True)
    with pytest.raises(DataError, match=r"bomb.png: declared size 4000x4000 exceeds the limit"):
        load_image(tmp_path / "bomb.png", max_pixels=1_000_000)


def test_masks_0_255_0_1_jpeg_artifacts_rgb_and_empty(tmp_path):
    _, mask = lesion_pair(1)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "ok.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "zero_one.png")
    noisy = np.where(mask, 250, 3).astype(np.uint8)
    noisy[0, 0] = 127  # just below the ISIC threshold
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "rgb.png")
    Image.new("L", (64, 48)).save(tmp_path / "empty.png")

    ok = load_mask(tmp_path / "ok.png")
    assert np.array_equal(ok.mask, mask) and ok.notes == []
    zero_one = load_mask(tmp_path / "zero_one.png")
    assert np.array_equal(zero_one.mask, mask) and zero_one.notes == ["zero_one"]
    thresholded = load_mask(tmp_path / "noisy.png")
    assert np.array_equal(thresholded.mask, mask) and thresholded.notes == ["thresholded"]
    rgb_mask = load_mask(tmp_path / "rgb.png")
    assert np.array_equal(rgb_mask.mask, mask) and rgb_mask.notes == ["converted_RGB"]
    empty = load_mask(tmp_path / "empty.png")
    assert not empty.mask.any() and empty.notes == []


def test_pairing_official_layout_ignores_other_files(tmp_path):
    images, masks = tmp_path / "imgs" / "inner", tmp_path / "masks" / "inner"
    for i in range(3):
        write_pair(images, masks, f"ISIC_{i:07d}", i)
    (images / "ISIC_0000000_superpixels.png").write_bytes(b"x")
    (images / "readme.txt").write_text("x")
    (tmp_path / "imgs" / "__MACOSX").mkdir()
    (tmp_path / "imgs" / "__MACOSX" / "._ISIC_0000000.jpg").write_bytes(b"x")
    (images / ".DS_Store").write_bytes(b"x")
    pairing = pair_images_and_masks(tmp_path / "imgs", tmp_path / "masks")
    assert [p[0] for p in pairing.pairs] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert sorted(p.rsplit("/", 1)[-1] for p in pairing.ignored) == ["ISIC_0000000_superpixels.png", "readme.txt"]


def test_image_without_mask_and_mask_without_image(tmp_path):
    write_pair(tmp_path / "i", tmp_path / "m", "ISIC_0000001", 1)
    write_pair(tmp_path / "i", tmp_path / "other", "ISIC_0000002", 2)
    with pytest.raises(DataError, match=r"ISIC_0000002.jpg: 1 image\(s\) without a mask.*ISIC_0000002"):
        pair_images_and_masks(tmp_path / "i", tmp_path / "m")
    write_pair(tmp_path / "i2", tmp_path / "m2", "ISIC_0000003", 3)
    write_pair(tmp_path / "x", tmp_path / "m2", "ISIC_0000004", 4)
    with pytest.raises(DataError, match=r"ISIC_0000004_Segmentation.png: 1 mask\(s\) without an image"):
        pair_images_and_masks(tmp_path / "i2", tmp_path / "m2")


def test_duplicate_ids(tmp_path):
    write_pair(tmp_path / "i" / "a", tmp_path / "m", "ISIC_0000001", 1)
    write_pair(tmp_path / "i" / "b", tmp_path / "m", "ISIC_0000001", 1)
    with pytest.raises(DataError, match=r"duplicate image for ISIC_0000001"):
        pair_images_and_masks(tmp_path / "i", tmp_path / "m")


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        pair_images_and_masks(tmp_path / "nope", tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="no ISIC_nnnnnnn.jpg images"):
        pair_images_and_masks(tmp_path / "a", tmp_path / "b")
