"""One image-loading policy on every route (processor, CLI, training data): transparency on white, 16-bit scaled,
oversized and broken files refused with their name (the CLI's folder behaviour is in test_cli.py)."""

import numpy as np
import pytest
from PIL import Image
from tiny import image_processor

from modeling_vlap.processing_vlap import open_image, to_rgb
from vlap.data import decode_image


def transparent_red(path):
    """Left half opaque red, right half fully transparent black: composited on white the right half is white."""
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :4] = (255, 0, 0, 255)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_transparency_is_composited_on_white_on_every_route(tmp_path):
    path = transparent_red(tmp_path / "rgba.png")
    expected = np.zeros((8, 8, 3), dtype=np.uint8)
    expected[:, :4], expected[:, 4:] = (255, 0, 0), 255
    routes = {
        "open_image (processor, CLI)": open_image(path),
        "decode_image (training, evaluation)": decode_image(str(path), None),
        "datasets cell": decode_image({"bytes": path.read_bytes(), "path": None}, None),
        "PIL image": to_rgb(Image.open(path)),
    }
    for route, image in routes.items():
        assert np.array_equal(np.asarray(image), expected), route
    # A palette image with a transparent index, and LA, composite the same way.
    palette = Image.open(path).convert("P", palette=Image.Palette.ADAPTIVE)
    assert to_rgb(Image.open(path).convert("LA")).getpixel((7, 0)) == (255, 255, 255)
    assert to_rgb(palette).mode == "RGB"


@pytest.mark.parametrize("mode, value, bits", [("I;16", 32768, 16), ("I;16", 65535, 16), ("I", 2**20, 32)])
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, mode, value, bits):
    array = np.full((4, 4), value, dtype=np.uint16 if mode == "I;16" else np.int32)
    image = Image.fromarray(array)
    assert image.mode == mode
    if mode == "I;16":
        image.save(tmp_path / "deep.png")
        image = Image.open(tmp_path / "deep.png")
    grey = to_rgb(image).getpixel((0, 0))
    assert grey == (value >> (bits - 8),) * 3  # PIL's own convert("RGB") gives (255, 255, 255)


def test_oversized_and_broken_files_are_refused_with_their_name(tmp_path, monkeypatch):
    good = tmp_path / "big.png"
    Image.new("RGB", (64, 64), "red").save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4,096 pixels: over the limit
    with pytest.raises(ValueError, match=r"big\.png: over the limit of 3,000 pixels .*decompression bomb.*64x64"):
        open_image(good)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the limit: PIL itself refuses to open it
    with pytest.raises(ValueError, match=r"big\.png: over the limit of 1,000 pixels"):
        open_image(good)
    assert decode_image(str(good), None) is None  # training counts it among the unreadable rows
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        open_image(broken)
    from tiny import bpe_tokenizer

    from modeling_vlap import VLAPProcessor

    processor = VLAPProcessor(image_processor=image_processor(), tokenizer=bpe_tokenizer())
    with pytest.raises(ValueError, match=r"images\[1\] .*broken\.png.* not a readable image"):
        processor(images=[good, broken])
