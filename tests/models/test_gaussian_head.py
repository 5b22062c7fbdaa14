import dataclasses
import math

import pytest
import torch

from gphm.geometry import intrinsics
from gphm.geometry.mesh import edge_list, knn_mean_distance
from gphm.geometry.rotations import axis_angle_to_matrix, quat_to_matrix
from gphm.models.gaussian_head import INHERITED, GaussianHead, GaussianHeadConfig

from .test_guidance import _inputs, _tiny_model


@pytest.fixture(scope="module")
def guidance():
    model = _tiny_model()
    with torch.no_grad():  # distinct codes, so identity/expression matter
        model.identity_codes.codes.weight.normal_(0, 0.5)
        model.expression_codes.codes.weight.normal_(0, 0.5)
        model.landmarks_canonical.normal_(0, 0.3)
        for p in model.f_col.parameters():  # colours that vary over the surface
            p.mul_(3)
    return model


@pytest.fixture(scope="module")
def head(guidance):
    return GaussianHead.create_from(guidance)


def test_create_from_inherits_networks_and_initialises_as_specified(guidance, head):
    mm = guidance.mean_mesh()
    assert head.num_points == mm.verts.shape[0]
    for name in INHERITED:
        a, b = getattr(guidance, name).state_dict(), getattr(head, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(head.points, mm.verts) and torch.equal(head.point_features, mm.features)
    dist = knn_mean_distance(mm.verts, 3)
    assert torch.allclose(head.log_scales, dist.log()[:, None].expand(-1, 3))
    assert torch.equal(head.quats, torch.tensor([1.0, 0, 0, 0]).expand(head.num_points, 4))
    assert torch.allclose(torch.sigmoid(head.opacity_logits), torch.tensor(0.1))
    assert torch.all(head.f_att.out.weight == 0) and torch.all(head.f_att.out.bias == 0)
    p0 = guidance.landmarks_canonical
    assert torch.equal(head.landmarks_canonical, p0)
    assert torch.allclose(head.landmark_features, guidance.mean_field(p0).features)
    # f_att starts at zero: the attributes are exactly S0, Q0, A0 for any codes.
    z = guidance.identity_codes.codes.weight, guidance.expression_codes.codes.weight[:2]
    att = head.attributes(*z)
    assert torch.equal(att.log_scales[1], head.log_scales)
    assert torch.equal(att.opacity_logits[0], head.opacity_logits)
    # Same deformation and colours as the guidance model's vertices.
    d = guidance.deform(mm.verts, mm.features, *z)
    assert torch.allclose(att.means, d.points) and torch.allclose(att.colors, d.colors)


def test_point_count_target_subdivides_then_subsamples(guidance):
    M = guidance.mean_mesh().verts.shape[0]
    more = GaussianHead.create_from(guidance, GaussianHeadConfig(num_points=3 * M))
    assert more.num_points == 3 * M
    fewer = GaussianHead.create_from(guidance, GaussianHeadConfig(num_points=M // 2))
    assert fewer.num_points == M // 2
    again = GaussianHead.create_from(guidance, GaussianHeadConfig(num_points=M // 2))
    assert torch.equal(fewer.points, again.points)  # deterministic


def test_face_points_add_the_midpoints_nearest_the_landmarks(guidance, head):
    mm = guidance.mean_mesh()
    M, K = mm.verts.shape[0], 25
    dense = GaussianHead.create_from(guidance, GaussianHeadConfig(face_points=K))
    assert dense.num_points == M + K
    assert torch.equal(dense.points[:M], head.points)  # the mesh's vertices come first
    # The added points are edge midpoints (features averaged), nearer the landmarks than
    # any midpoint left out.
    edges = edge_list(mm.faces)
    mids, feats = mm.verts[edges].mean(1), mm.features[edges].mean(1)
    match = torch.cdist(dense.points[M:], mids).argmin(1)
    assert torch.allclose(dense.points[M:], mids[match], atol=1e-6)
    assert torch.allclose(dense.point_features[M:], feats[match], atol=1e-6)
    near = torch.cdist(mids, guidance.landmarks_canonical).amin(1)
    left_out = torch.ones(len(mids), dtype=torch.bool)
    left_out[match] = False
    assert near[match].max() <= near[left_out].min() + 1e-6
    # Scales follow the denser neighbourhood: never larger, smaller near the new points.
    dist = knn_mean_distance(dense.points.detach(), 3)
    assert torch.allclose(dense.log_scales, dist.log()[:, None].expand(-1, 3))
    assert torch.all(dense.log_scales[:M] <= head.log_scales + 1e-6)
    assert torch.any(dense.log_scales[:M] < head.log_scales - 1e-3)
    again = GaussianHead.create_from(guidance, GaussianHeadConfig(face_points=K))
    assert torch.equal(dense.points, again.points)  # deterministic


def test_face_radius_spreads_the_face_points_over_the_landmarks_region(guidance, head):
    mm = guidance.mean_mesh()
    M, K, radius = mm.verts.shape[0], 25, 0.3
    packed = GaussianHead.create_from(guidance, GaussianHeadConfig(face_points=K))
    even = GaussianHead.create_from(
        guidance, GaussianHeadConfig(face_points=K, face_radius=radius), seed=1
    )
    assert even.num_points == M + K and torch.equal(even.points[:M], head.points)
    edges = edge_list(mm.faces)
    mids, feats = mm.verts[edges].mean(1), mm.features[edges].mean(1)
    match = torch.cdist(even.points[M:], mids).argmin(1)
    assert torch.allclose(even.points[M:], mids[match], atol=1e-6)
    assert torch.allclose(even.point_features[M:], feats[match], atol=1e-6)
    lmk = guidance.landmarks_canonical
    near = torch.cdist(even.points[M:], lmk).amin(1)
    assert near.max() < radius  # inside the region ...
    assert near.mean() > torch.cdist(packed.points[M:], lmk).amin(1).mean()  # ... and spread
    again = GaussianHead.create_from(
        guidance, GaussianHeadConfig(face_points=K, face_radius=radius), seed=1
    )
    assert torch.equal(even.points, again.points)
    with pytest.raises(ValueError, match="face_radius"):
        GaussianHeadConfig(face_points=K, face_radius=-0.1)


def test_splat_agrees_with_the_mesh_render_right_after_creation(guidance, head):
    """Stated tolerance (48 px renders, ~700 Gaussians at opacity 0.1): silhouettes
    overlap with IoU > 0.78, the splatted alpha averages > 0.6 where the mesh covers a
    pixel fully, and there the un-composited splat colour is within 0.02 mean absolute
    error of the mesh's interpolated colour (which varies by ~0.15 over the surface)."""
    K = intrinsics(60.0, 60.0, 24.0, 24.0).expand(3, 3, 3)
    inputs = _inputs(3) | {"Ks_lr": K, "width_lr": 48, "height_lr": 48}
    with torch.no_grad():
        mesh = guidance(**inputs)
        gs = head(**inputs)
    inside = mesh.mask[..., 0] > 0.99
    assert inside.sum() > 300
    assert gs.mask[..., 0][inside].mean() > 0.6
    m, g = mesh.mask > 0.5, gs.mask > 0.5
    assert (m & g).sum() / (m | g).sum() > 0.78
    ok = inside & g[..., 0]
    colour = (gs.features - (1 - gs.mask)) / gs.mask.clamp_min(1e-3)  # undo the white background
    truth = mesh.features[..., :3][ok]
    assert truth.std(0).max() > 0.1  # the check below is not trivially satisfied
    assert (colour[..., :3][ok] - truth).abs().mean() < 0.02


def test_head_pose_rotates_positions_and_orientations(head, guidance):
    z_id = guidance.identity_codes.codes.weight[:1]
    z_exp = guidance.expression_codes.codes.weight[:1]
    with torch.no_grad():
        head.quats[:5] = torch.tensor([0.9, 0.3, -0.2, 0.1])  # non-trivial canonical rotation
        att = head.attributes(z_id, z_exp)
        R = axis_angle_to_matrix(torch.tensor([[0.3, -1.1, 0.4]]))
        T, s = torch.tensor([[0.1, -0.2, 2.0]]), torch.tensor([1.5])
        means, quats, scales = att.posed(R, T, s)
        head.quats[:5] = torch.tensor([1.0, 0, 0, 0])
    assert torch.allclose(means[0], s * att.means[0] @ R[0].T + T, atol=1e-6)
    # World orientation = R · canonical orientation (a sign flip or a swapped product fails).
    Rq = quat_to_matrix(torch.nn.functional.normalize(quats[0, :5], dim=-1))
    Rc = quat_to_matrix(torch.nn.functional.normalize(att.quats[0, :5], dim=-1))
    assert torch.allclose(Rq, R[0] @ Rc, atol=1e-5)
    assert torch.allclose(scales, s * att.log_scales.exp())


def test_save_load_round_trip_and_gradients(head, tmp_path):
    head.save_pretrained(tmp_path / "g")
    loaded = GaussianHead.from_pretrained(tmp_path / "g")
    inputs = _inputs(2)
    with torch.no_grad():
        a, b = head(**inputs), loaded(**inputs)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.landmarks, b.landmarks)
    with torch.no_grad():  # zero-initialised offset heads would block gradients to Γ
        loaded.f_id.out.weight.normal_(0, 0.1)
    out = loaded(**inputs)
    (out.rgb.mean() + out.landmarks.sum()).backward()
    for name in ("points", "point_features", "log_scales", "opacity_logits",
                 "landmarks_canonical", "landmark_features"):  # fmt: skip
        g = getattr(loaded, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert loaded.f_att.out.weight.grad.abs().sum() > 0
    assert loaded.identity_codes.codes.weight.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="init_opacity"):
        GaussianHeadConfig(init_opacity=1.0)
    with pytest.raises(ValueError, match="num_points"):
        GaussianHeadConfig(num_points=-1)
    with pytest.raises(ValueError, match="face_points"):
        GaussianHeadConfig(face_points=-1)
    assert math.isclose(torch.sigmoid(torch.tensor(math.log(0.1 / 0.9))).item(), 0.1, rel_tol=1e-6)
    with pytest.raises(ValueError, match="eps2d"):
        GaussianHeadConfig(eps2d=-0.1)
    with pytest.raises(ValueError, match="eps2d"):
        GaussianHeadConfig(eps2d=float("nan"))


def test_configured_eps2d_reaches_the_rasterizer_and_survives_save_load(
    guidance, tmp_path, monkeypatch
):
    import gphm.models.gaussian_head as module

    sharp = GaussianHead.create_from(guidance, GaussianHeadConfig(eps2d=0.05, antialiased=True))
    sharp.save_pretrained(tmp_path / "g")
    loaded = GaussianHead.from_pretrained(tmp_path / "g")
    assert loaded.config.eps2d == 0.05 and loaded.config.antialiased
    seen, rasterize = [], module.rasterize_gaussians

    def spy(*args, **kwargs):
        seen.append((kwargs["eps2d"], kwargs["antialiased"]))
        return rasterize(*args, **kwargs)

    monkeypatch.setattr(module, "rasterize_gaussians", spy)
    with torch.no_grad():
        a = loaded(**_inputs(2))
    assert seen == [(0.05, True), (0.05, True)]
    monkeypatch.undo()
    with torch.no_grad():
        b = GaussianHead.from_pretrained(tmp_path / "g")(**_inputs(2))
        blurred = GaussianHead.create_from(guidance)(**_inputs(2))
    assert torch.equal(a.mask, b.mask)
    # The renderer's own tests pin down what the two options do; here: they are applied.
    assert (a.mask - blurred.mask).abs().max() > 0.05


@torch.no_grad()
def test_landmarks_follow_the_point_offsets_of_their_nearest_gaussians(head, guidance):
    z_id = torch.zeros(1, head.identity_codes.config.dim)
    z_exp = torch.zeros(1, head.expression_codes.config.dim)
    base = head.canonical_landmarks(z_id, z_exp)  # [1, L, 3]
    N = head.points.shape[0]
    # A uniform offset moves every landmark by exactly that offset (weights sum to 1).
    shift = torch.tensor([0.01, -0.02, 0.03])
    moved = head.canonical_landmarks(z_id, z_exp, shift.expand(N, 3))
    torch.testing.assert_close(moved - base, shift.expand_as(base))
    # Offsets on Gaussians that anchor no landmark leave every landmark where it was.
    idx, w = head.landmark_anchors()
    assert idx.shape == w.shape == (base.shape[1], 8)
    torch.testing.assert_close(w.sum(1), torch.ones(base.shape[1]))
    free = torch.ones(N, dtype=torch.bool)
    free[idx.flatten()] = False
    offsets = torch.zeros(N, 3)
    offsets[free] = 0.5
    torch.testing.assert_close(head.canonical_landmarks(z_id, z_exp, offsets), base)
    # Landmark 0's nearest Gaussian moved: landmark 0 moves along it, by its weight.
    offsets = torch.zeros(N, 3)
    offsets[idx[0, 0]] = torch.tensor([0.0, 0.1, 0.0])
    d = head.canonical_landmarks(z_id, z_exp, offsets) - base
    assert d[0, 0, 1] == pytest.approx(0.1 * float(w[0, 0]), rel=1e-4) and d[0, 0, 1] > 0
    # render() reports the same landmarks as canonical_landmarks (posed).
    eye = torch.eye(3)[None]
    out = head.render(z_id, z_exp, eye, torch.zeros(1, 3), torch.ones(1), torch.eye(4)[None],
                      torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]]), 16, 16,
                      point_offsets=offsets)  # fmt: skip
    torch.testing.assert_close(out.landmarks, base + d)
    with pytest.raises(ValueError, match="GuidanceModel has none"):
        guidance.canonical_landmarks(z_id, z_exp, offsets)


NO_BASES = GaussianHeadConfig(expression_basis=False, identity_basis=False, color_basis_channels=0)


def test_expression_basis_is_a_per_gaussian_blendshape_of_the_code(guidance, tmp_path):
    plain = GaussianHead.create_from(guidance, NO_BASES)
    head = GaussianHead.create_from(guidance, GaussianHeadConfig(identity_basis=False))
    N, D = head.num_points, head.expression_codes.config.dim
    assert head.expression_basis.shape == (N, 3, D) and not hasattr(plain, "expression_basis")
    z_id, z_exp = torch.randn(2, head.identity_codes.config.dim), torch.randn(2, D)
    with torch.no_grad():  # zero at creation: the head is the one without the basis
        a, b = head.attributes(z_id, z_exp), plain.attributes(z_id, z_exp)
        assert torch.equal(a.means, b.means)
        torch.testing.assert_close(head.canonical_landmarks(z_id, z_exp),
                                   plain.canonical_landmarks(z_id, z_exp))  # fmt: skip
        # One Gaussian's basis column d moves that Gaussian by z_exp[:, d] along it, in
        # means and delta_exp, and nothing else; a landmark anchored to it by its weight.
        idx, w = head.landmark_anchors()
        g, d = int(idx[3, 0]), 5
        head.expression_basis[g, :, d] = torch.tensor([0.0, 0.2, -0.1])
        moved = head.attributes(z_id, z_exp)
        delta = moved.means - a.means
        want = z_exp[:, d, None] * torch.tensor([0.0, 0.2, -0.1])
        torch.testing.assert_close(delta[:, g], want)
        torch.testing.assert_close(moved.deformation.delta_exp - a.deformation.delta_exp, delta)
        assert delta.abs().sum() == pytest.approx(want.abs().sum().item(), rel=1e-5)
        lmk = head.canonical_landmarks(z_id, z_exp) - plain.canonical_landmarks(z_id, z_exp)
        torch.testing.assert_close(lmk[:, 3], float(w[3, 0]) * want, atol=1e-6, rtol=1e-5)
        # The neutral code (0) gets no basis offset.
        zero = torch.zeros(2, D)
        torch.testing.assert_close(head.attributes(z_id, zero).means,
                                   plain.attributes(z_id, zero).means)  # fmt: skip
    out = head.canonical_landmarks(z_id, z_exp).sum() + head.attributes(z_id, z_exp).means.sum()
    out.backward()
    assert head.expression_basis.grad.abs().sum() > 0
    head.save_pretrained(tmp_path / "g")  # the basis travels with the model
    loaded = GaussianHead.from_pretrained(tmp_path / "g")
    assert loaded.config.expression_basis and torch.equal(
        loaded.expression_basis, head.expression_basis
    )


@torch.no_grad()
def test_identity_basis_moves_identity_offsets_not_expression_offsets(guidance):
    plain = GaussianHead.create_from(guidance, NO_BASES)
    head = GaussianHead.create_from(guidance, GaussianHeadConfig(expression_basis=False))
    Did, Dexp = head.identity_codes.config.dim, head.expression_codes.config.dim
    assert head.identity_basis.shape == (head.num_points, 3, Did)
    assert head.bases()[1] is None and plain.bases() == (None, None)
    z_id, z_exp = torch.randn(2, Did), torch.randn(2, Dexp)
    idx, w = head.landmark_anchors()
    g = int(idx[2, 0])
    head.identity_basis[g, :, 2] = torch.tensor([0.1, 0.0, 0.0])
    a, b = head.attributes(z_id, z_exp), plain.attributes(z_id, z_exp)
    want = z_id[:, 2, None] * torch.tensor([0.1, 0.0, 0.0])
    torch.testing.assert_close((a.means - b.means)[:, g], want)
    torch.testing.assert_close(a.deformation.delta_id - b.deformation.delta_id, a.means - b.means)
    torch.testing.assert_close(a.deformation.delta_exp, b.deformation.delta_exp)
    lmk = head.canonical_landmarks(z_id, z_exp) - plain.canonical_landmarks(z_id, z_exp)
    torch.testing.assert_close(lmk[:, 2], float(w[2, 0]) * want, atol=1e-6, rtol=1e-5)


def test_config_json_without_the_basis_fields_loads_without_bases(guidance, tmp_path):
    import json

    from gphm.models.base import CONFIG_NAME

    GaussianHead.create_from(guidance, NO_BASES).save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    desc = json.loads(path.read_text())
    for key in ("expression_basis", "identity_basis", "color_basis_channels"):  # before the fields
        del desc["config"][key]
    path.write_text(json.dumps(desc))
    old = GaussianHead.from_pretrained(tmp_path / "old")
    assert old.bases() == (None, None) and old.color_bases() == (None, None)
    assert not (old.config.expression_basis or old.config.identity_basis)


@torch.no_grad()
def test_color_bases_add_per_gaussian_logits_of_both_codes_on_the_first_channels(guidance):
    plain = GaussianHead.create_from(guidance, NO_BASES)
    head = GaussianHead.create_from(guidance, dataclasses.replace(NO_BASES, color_basis_channels=3))
    N, C = head.num_points, head.color_channels
    Did, Dexp = head.identity_codes.config.dim, head.expression_codes.config.dim
    c_id, c_exp = head.color_bases()
    assert c_id.shape == (N, 3, Did) and c_exp.shape == (N, 3, Dexp)
    assert plain.color_bases() == (None, None) and plain.color_basis_logits(
        torch.zeros(1, Did), torch.zeros(1, Dexp)) is None  # fmt: skip
    z_id, z_exp = torch.randn(2, Did), torch.randn(2, Dexp)
    base = plain.attributes(z_id, z_exp).colors
    torch.testing.assert_close(head.attributes(z_id, z_exp).colors, base)  # zero at creation
    # Gaussian g's green logit moves by z_exp[:, 4]·0.5 − z_id[:, 1]·0.3; nothing else moves.
    g = 7
    c_exp[g, 1, 4], c_id[g, 1, 1] = 0.5, -0.3
    colors = head.attributes(z_id, z_exp).colors
    want = torch.logit(base[:, g, 1]) + 0.5 * z_exp[:, 4] - 0.3 * z_id[:, 1]
    torch.testing.assert_close(torch.logit(colors[:, g, 1]), want, atol=1e-4, rtol=1e-4)
    changed = (colors - base).abs() > 0
    assert changed[:, g, 1].all() and changed.sum() == 2
    assert head.attributes(z_id, z_exp).means.equal(plain.attributes(z_id, z_exp).means)
    with pytest.raises(ValueError, match="color_basis_channels"):
        GaussianHead.create_from(guidance, GaussianHeadConfig(color_basis_channels=C + 1))
    with pytest.raises(ValueError, match="color_basis_channels"):
        GaussianHeadConfig(color_basis_channels=-1)


@torch.no_grad()
def test_expression_parts_route_each_path_its_own_code(guidance):
    """``exp_parts`` gives the networks, E_exp and C_exp each their own expression code:
    fed z2 they are the head at z2, each one moves only what it drives, and the three
    together are the head at z2."""
    from gphm.models.gaussian_head import EXPRESSION_PARTS

    head = GaussianHead.create_from(guidance, GaussianHeadConfig(color_basis_channels=3))
    g = torch.Generator().manual_seed(0)
    for basis in head.learned_bases():
        basis.normal_(0, 0.2, generator=g)
    for p in head.f_att.parameters():  # f_att starts at zero: make it see the code
        p.normal_(0, 0.1, generator=g)
    Did, Dexp = head.identity_codes.config.dim, head.expression_codes.config.dim
    z_id = torch.randn(2, Did, generator=g)
    z1, z2 = torch.randn(2, Dexp, generator=g), torch.randn(2, Dexp, generator=g)
    a1, a2 = head.attributes(z_id, z1), head.attributes(z_id, z2)
    same = head.attributes(z_id, z1, exp_parts={p: z1 for p in EXPRESSION_PARTS})
    assert torch.equal(same.means, a1.means) and torch.equal(same.colors, a1.colors)
    every = head.attributes(z_id, z1, exp_parts={p: z2 for p in EXPRESSION_PARTS})
    for name in ("means", "colors", "log_scales", "quats", "opacity_logits"):
        torch.testing.assert_close(getattr(every, name), getattr(a2, name))
    torch.testing.assert_close(
        head.canonical_landmarks(z_id, z1, exp_parts={p: z2 for p in EXPRESSION_PARTS}),
        head.canonical_landmarks(z_id, z2))  # fmt: skip
    # E_exp alone: the means move by E_exp·(z2 − z1), nothing else changes.
    pos = head.attributes(z_id, z1, exp_parts={"position_basis": z2})
    want = torch.einsum("nkd,bd->bnk", head.expression_basis, z2 - z1)
    torch.testing.assert_close(pos.means - a1.means, want)
    assert torch.equal(pos.colors, a1.colors) and torch.equal(pos.log_scales, a1.log_scales)
    # C_exp alone: the first 3 colour logits move by C_exp·(z2 − z1); positions stay.
    col = head.attributes(z_id, z1, exp_parts={"color_basis": z2})
    shift = torch.einsum("nkd,bd->bnk", head.expression_color_basis, z2 - z1)
    torch.testing.assert_close(torch.logit(col.colors[..., :3]) - torch.logit(a1.colors[..., :3]),
                               shift, atol=2e-4, rtol=1e-3)  # fmt: skip
    assert torch.equal(col.colors[..., 3:], a1.colors[..., 3:])
    assert torch.equal(col.means, a1.means) and torch.equal(col.opacity_logits, a1.opacity_logits)
    # The networks alone: f_att's attributes follow z2, the bases' terms stay at z1.
    net = head.attributes(z_id, z1, exp_parts={"networks": z2})
    torch.testing.assert_close(net.opacity_logits, a2.opacity_logits)
    torch.testing.assert_close(net.means - a2.means, -want)  # E_exp still at z1
    with pytest.raises(ValueError, match="unknown part"):
        head.attributes(z_id, z1, exp_parts={"f_col": z2})
    with pytest.raises(ValueError, match="shape"):
        head.attributes(z_id, z1, exp_parts={"networks": z2[:1]})
