import numpy as np
import pytest
import torch
from PIL import Image

from gphm.io.images import image_grid, load_image, read_image, save_png, to_uint8


def test_png_round_trip(tmp_path):
    img = torch.rand(5, 7, 3)
    save_png(tmp_path / "a.png", img)
    back = load_image(tmp_path / "a.png")
    assert back.shape == (5, 7, 3)
    assert torch.allclose(back, img, atol=0.5 / 255 + 1e-6)


def test_to_uint8_clamps_and_keeps_three_feature_channels():
    img = torch.tensor([[[-1.0, 0.5, 2.0, 0.3]]]).expand(2, 2, 4).repeat(1, 1, 8)
    out = to_uint8(img)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 128, 255]


def test_image_grid_layout():
    ims = [torch.full((2, 3, 1), float(i)) for i in range(3)]
    g = image_grid(ims, ncols=2, pad=1, pad_value=-1.0)
    assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert g[1, 1, 0] == 0 and g[1, 5, 0] == 1 and g[4, 1, 0] == 2 and g[4, 5, 0] == -1


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_save_mp4_round_trip(tmp_path):
    import imageio.v2 as imageio

    from gphm.io.video import save_mp4

    frames = [torch.full((16, 24, 3), i / 4) for i in range(5)]
    p = save_mp4(tmp_path / "v.mp4", frames, fps=10)
    back = imageio.mimread(p)
    assert len(back) == 5 and back[0].shape == (16, 24, 3)
    assert abs(int(back[4].mean()) - 255) < 8
    with pytest.raises(ValueError, match="no frames"):
        save_mp4(tmp_path / "e.mp4", [])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.mp4"]


# ----------------------------------------------------------------------------- decoding


def _ramp(h=8, w=10):  # [H, W] float in [0, 1]
    return np.linspace(0.0, 1.0, h * w).reshape(h, w)


def test_16_bit_grayscale_png_is_scaled_by_65535(tmp_path):
    """16-bit PNGs came out all white (PIL clips I;16 to 255 in convert("RGB"))."""
    g = _ramp()
    Image.fromarray(np.rint(g * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")
    img = read_image(tmp_path / "g16.png")
    assert img.alpha is None and img.rgb.shape == (8, 10, 3)
    np.testing.assert_allclose(img.rgb, np.repeat(g[..., None], 3, -1), atol=1e-4)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1", "I", "F"])
def test_other_modes_become_the_same_rgb(tmp_path, mode):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[:, :5] = (200, 30, 90)
    rgb[:, 5:] = (255, 255, 255)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "I":
        im = Image.fromarray(gray.astype(np.int32) * 257)  # 16-bit values in a 32-bit image
    elif mode == "F":
        im = Image.fromarray(gray.astype(np.float32) / 255.0)
    else:
        im = Image.fromarray(rgb).convert(mode)
    ext = "tiff" if mode in ("I", "F", "CMYK") else "png"
    im.save(tmp_path / f"a.{ext}")
    out = read_image(tmp_path / f"a.{ext}")
    assert out.rgb.shape == (8, 10, 3) and out.rgb.dtype == np.float32 and out.alpha is None
    if mode in ("P", "CMYK", "1"):  # PIL's own colour conversion is the reference
        expected = np.asarray(im.convert("RGB"), np.float32) / 255.0
    else:  # gray, whatever the bit depth
        expected = np.repeat(gray[..., None], 3, -1) / 255.0
    np.testing.assert_allclose(out.rgb, expected, atol=1.5 / 255)


def test_transparent_cutout_is_composited_on_white_and_kept_as_alpha(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :4, 3] = 255  # a head on the left, transparent elsewhere
    rgba[:, 4, 3] = 128  # one soft edge column
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    img = read_image(tmp_path / "cut.png")
    a = rgba[..., 3] / 255.0
    np.testing.assert_allclose(img.alpha, a, atol=1e-6)
    expected = (rgba[..., :3] / 255.0) * a[..., None] + (1 - a[..., None])
    np.testing.assert_allclose(img.rgb, expected, atol=1e-6)
    assert img.rgb[0, 9].tolist() == [1.0, 1.0, 1.0]  # transparent -> white, not black


def test_opaque_or_palette_transparency(tmp_path):
    rgba = np.full((8, 10, 4), 255, np.uint8)
    rgba[..., :3] = 40
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    img = read_image(tmp_path / "opaque.png")
    assert img.alpha is None and np.allclose(img.rgb, 40 / 255)
    p = Image.fromarray(np.where(np.arange(10) < 5, 1, 0).astype(np.uint8)[None].repeat(8, 0), "P")
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "pal.png", transparency=0)
    img = read_image(tmp_path / "pal.png")
    assert img.alpha is not None and img.alpha[:, 5:].max() == 0 and img.alpha[:, :5].min() == 1
    assert np.allclose(img.rgb[:, 5:], 1.0)  # transparent palette entry -> white
    np.testing.assert_allclose(img.rgb[0, 0], np.array([200, 100, 50]) / 255, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = 255  # top-left marker, stored landscape
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.rgb.shape == (6, 4, 3)  # shown portrait
    assert out.rgb[0, -1].mean() > 0.5  # the marker moved to the top-right corner


def test_truncated_and_non_images_are_one_line_errors(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    for name in ("cut.png", "text.jpg"):
        with pytest.raises(ValueError, match=f"{name}: not a readable image") as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value)


def test_image_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1M")  # 300 x 400 x 3 floats = 1.4 MB
    with pytest.raises(ValueError, match=r"big.png \(1 3-channel 300x400 image\) would need 1.4"):
        read_image(tmp_path / "big.png")
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "2M")
    assert read_image(tmp_path / "big.png").rgb.shape == (300, 400, 3)
