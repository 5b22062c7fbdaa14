import numpy as np
import pytest
import torch

from gphm.io.images import image_grid, load_image, save_png, to_uint8


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
