import pytest
import torch

from gphm import losses
from gphm.geometry import intrinsics, look_at
from gphm.geometry.mesh import euler_characteristic, is_watertight
from gphm.geometry.pose import apply_head_pose
from gphm.models.guidance import GuidanceConfig, GuidanceModel
from gphm.models.mlp import MLPConfig
from gphm.models.upsampler import UpsamplerConfig


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    small = MLPConfig(width=16, depth=2)
    cfg = GuidanceConfig(
        tet_resolution=12,
        f_mean=MLPConfig(width=32, depth=2, activation="softplus"),
        mean_feature_dim=8, injected_dim=8, f_inj=small, f_col=small,
        f_id=MLPConfig(width=16, depth=2, zero_init_last=True),
        f_exp=MLPConfig(width=16, depth=2, zero_init_last=True),
        color_channels=8, num_landmarks=5, upsampler=UpsamplerConfig(factor=2, width=8, blocks=1),
    )  # fmt: skip
    model = GuidanceModel(cfg, num_subjects=2, num_frames=3)
    opt = torch.optim.Adam(model.f_mean.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        x = torch.rand(2048, 3, generator=g) * 2 - 1
        loss = losses.sdf_sphere(model.mean_field(x).sdf, x, 0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _inputs(B):
    eye = torch.tensor([[0.3, 0.2, 3.0]]).expand(B, 3)
    return dict(
        subject=torch.arange(B) % 2,
        frame=torch.arange(B) % 3,
        head_R=torch.eye(3).expand(B, 3, 3),
        head_T=torch.zeros(B, 3),
        head_scale=torch.ones(B),
        viewmats=look_at(eye, torch.zeros(B, 3)),
        Ks_lr=intrinsics(20.0, 20.0, 8.0, 8.0).expand(B, 3, 3),
        width_lr=16,
        height_lr=16,
    )


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.mark.parametrize("B", [1, 3])
def test_forward_shapes_and_mean_mesh(model, B):
    out = model(**_inputs(B))
    M = out.mean_mesh.verts.shape[0]
    assert out.rgb.shape == (B, 32, 32, 3)
    assert out.features.shape == (B, 16, 16, 8) and out.mask.shape == (B, 16, 16, 1)
    assert out.landmarks.shape == (B, 5, 3) and out.verts.shape == (B, M, 3)
    assert out.deformation.colors.shape == (B, M, 8)
    assert is_watertight(out.faces) and euler_characteristic(out.mean_mesh.verts, out.faces) == 2
    # Zero-initialised offset heads: the posed mesh starts as the mean mesh.
    assert torch.allclose(out.verts[0], out.mean_mesh.verts, atol=1e-6)
    # Outside the silhouette the features are the white background.
    empty = out.mask[..., 0] == 0
    assert torch.all(out.features[empty] == 1)


def test_head_pose_is_applied():
    pts = torch.tensor([[[1.0, 0.0, 0.0]]])
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[None]  # +90° about z
    out = apply_head_pose(pts, Rz, torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([2.0]))
    assert torch.allclose(out, torch.tensor([[[0.0, 2.0, 5.0]]]))


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = GuidanceModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a, b = model(**_inputs(2)), loaded(**_inputs(2))
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.landmarks, b.landmarks)
    (tmp_path / "m" / "config.json").write_text('{"class": "GaussianHead"}')
    with pytest.raises(ValueError, match="holds a 'GaussianHead', expected 'GuidanceModel'"):
        GuidanceModel.from_pretrained(tmp_path / "m")


def test_one_step_lowers_the_loss():
    model = _tiny_model(seed=1)
    inputs = _inputs(2)
    target = torch.full((2, 32, 32, 3), 0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn():
        return losses.l1(model(**inputs).rgb, target)

    before = loss_fn()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss_fn().item() < before.item()


def test_out_of_range_codes_name_themselves(model):
    inputs = _inputs(1) | {"subject": torch.tensor([7])}
    with pytest.raises(IndexError, match=r"identity index out of range \[0, 2\)"):
        model(**inputs)
