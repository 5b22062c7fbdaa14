"""Tracking (gphm.tracking), reenactment and split=reenact on tiny models and sequences."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.data.format import SPLITS
from gphm.data.loaders import HeadDataset
from gphm.data.preprocess.detectors import Detection, NoFaceError
from gphm.data.synthetic import MakeSyntheticConfig
from gphm.data.synthetic.sequence import generate_sequence
from gphm.evaluation.reenact import camera_pose_to_world, evaluate_reenact, moved_pose
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import FitConfig, render_avatar
from gphm.fitting.sources import resolve_source
from gphm.geometry import intrinsics, look_at
from gphm.geometry.cameras import project_points, rig_center, world_to_camera
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.inversion import NonFiniteError
from gphm.models.runs import load_run
from gphm.tracking.inputs import frames_from_dataset, frames_from_video
from gphm.tracking.outputs import reenact
from gphm.tracking.pipeline import reenact_to_dir, track_video
from gphm.tracking.track import (
    TrackConfig,
    TrackFrame,
    Tracking,
    landmark_jitter,
    render_tracking,
    track_frames,
)
from gphm.training.trainer import GuidanceTrainer
from tests.training.test_train import ROOT, _cfg, _env

# The `run` fixture was trained on the ellipsoid heads, not on the synthetic sequence's:
# it renders (almost) nothing over a sequence frame's head (coverage ~0), which the fit's
# collapse guard refuses. These tests check tracking's bookkeeping, so it is switched off.
FAST = TrackConfig(steps=4, fit=FitConfig(phase1_steps=8, phase2_steps=2, min_coverage=0))


@pytest.fixture(scope="module")
def run(tiny_head_dataset, tmp_path_factory):
    """A stage-1 tiny model (32 px) trained briefly on the ellipsoid heads."""
    path = tmp_path_factory.mktemp("track") / "run"
    cfg = _cfg(tiny_head_dataset, path, "train.guidance_steps=30", "train.batch_size=2",
               "train.code_lr=2e-2")  # fmt: skip
    GuidanceTrainer(cfg).train()
    return load_run(path)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    out = tmp_path_factory.mktemp("track") / "seq"
    cfg = MakeSyntheticConfig(out=str(out), mode="sequence", num_identities=2, num_frames=4,
                              num_views=2, resolution=32, mesh_frequency=8, seed=0)  # fmt: skip
    generate_sequence(cfg, progress=False)
    return out


def _own_renders(run, num=6):
    """The model's own renders of subject a turning its head (yaw up to 12°, a small shift)
    while its expression code moves away from its first frame's, seen by the frontal camera
    of the tiny rig (the camera is the origin): frames with known truth."""
    model = run.model
    K = intrinsics(1.2 * 32, 1.2 * 32, 16.0, 16.0)
    vm = look_at(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(1, 3))[0]
    z_id = model.identity_codes.codes.weight[0].detach()
    z_a = model.expression_codes.codes.weight[0].detach()
    std = model.expression_codes.std().detach()
    z_b = z_a + 3.0 * std * torch.sign(
        torch.randn(z_a.shape, generator=torch.Generator().manual_seed(1))
    )
    frames, truth, poses = [], [], []
    with torch.no_grad():
        for t in range(num):
            w = t / (num - 1)
            z = z_a + (z_b - z_a) * w
            R = vm[:3, :3] @ axis_angle_to_matrix(torch.tensor([0.0, math.radians(12) * w, 0.0]))
            T = vm[:3, 3] + torch.tensor([0.06 * w, 0.0, 0.0])
            out = render_avatar(model, z_id[None], z[None], R[None], T[None], torch.ones(1),
                                torch.eye(4)[None], K[None], 32)  # fmt: skip
            uv, _ = project_points(out.landmarks, torch.eye(4)[None], K[None])
            mask = out.mask[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
            frames.append(TrackFrame(out.rgb[0].clamp(0, 1), mask, K, uv[0]))
            truth.append(z)
            poses.append((R, T))
    R0, T0 = poses[0]
    avatar = Avatar(checkpoint=str(run.path), model_class="GuidanceModel", z_id=z_id,
                    z_exp=z_a, head_R=R0, head_T=T0, head_scale=1.0, K=K,
                    image_size=32)  # fmt: skip
    return frames, torch.stack(truth), avatar


def test_tracking_follows_the_head_and_carries_a_frame_without_a_face(run):
    frames, _, avatar = _own_renders(run)
    true_uv = [f.landmarks.clone() for f in frames]
    frames[3] = TrackFrame(frames[3].image, frames[3].mask, frames[3].K, None)  # no face
    tracking = track_frames(run, frames, TrackConfig(), avatar=avatar)  # the defaults
    assert tracking.carried == [False, False, False, True, False, False]
    assert torch.equal(tracking.z_exp[3], tracking.z_exp[2])
    assert torch.equal(tracking.head_R[3], tracking.head_R[2])
    assert math.isnan(float(tracking.input_landmarks[3, 0, 0]))
    errors = tracking.landmark_errors()
    assert errors[3] is None and all(e is not None for i, e in enumerate(errors) if i != 3)
    # The tracked head follows the motion: the last frame's landmarks and image are much
    # closer to the truth than holding the first frame's state.
    held = float((tracking.landmarks[0] - true_uv[-1]).norm(dim=-1).mean())
    tracked = float((tracking.landmarks[-1] - true_uv[-1]).norm(dim=-1).mean())
    assert tracked < 0.3 * held, (tracked, held)
    net = tracking.avatar.personalised(run.model)
    last = render_tracking(net, tracking.avatar, tracking.z_exp[[0, -1]], tracking.head_R[[0, -1]],
                           tracking.head_T[[0, -1]], 1.0, torch.eye(4).expand(2, 4, 4),
                           tracking.K[[0, -1]], 32)  # fmt: skip
    err = (last - frames[-1].image[None]).abs().mean((1, 2, 3))
    assert err[1] < err[0], err
    assert tracking.seconds_per_frame() is not None and len(tracking.seconds) == 6
    # The model is left as it was.
    assert all(p.requires_grad for p in run.model.parameters())


def _frame_rows(sequence, item):
    """Every camera's row of ``item``'s frame."""
    ds = HeadDataset(sequence, split=list(SPLITS))
    return [ds[i] for i in range(len(ds)) if int(ds.frames[i]) == int(item.frame)]


def test_tracking_fits_the_identity_on_the_first_face_frame(run, sequence):
    frames, items, _ = frames_from_dataset(sequence, "seq_000")
    assert [f.info["step"] for f in frames] == [0, 1, 2, 3]
    assert all(it.camera == "cam_00" for it in items)
    # Each frame knows where the sequence's rig is aimed, in its camera's frame: the
    # identity fit takes its size from it (gphm.fitting.fit._head_scale).
    center = rig_center(torch.stack([it.viewmat for it in _frame_rows(sequence, items[0])]))
    for f, it in zip(frames, items):
        expected = world_to_camera(it.viewmat, center[None].float())[0]
        torch.testing.assert_close(f.head_center, expected)
    frames[0] = TrackFrame(frames[0].image, frames[0].mask, frames[0].K, None)
    tracking = track_frames(run, frames, FAST)
    assert tracking.identity_frame == 1 and tracking.carried[0]
    assert tracking.avatar.head_scale != 1.0
    assert torch.equal(tracking.z_exp[0], tracking.z_exp[1])  # leading frame: the first face's
    assert tracking.info["identity_fit_seconds"] > 0
    blank = [TrackFrame(f.image, f.mask, f.K, None) for f in frames]
    with pytest.raises(ValueError, match="no face found in any of the 4 frames"):
        track_frames(run, blank, FAST)


def test_a_diverging_tracking_stops_naming_the_option_and_reports_coverage(run):
    frames, _, avatar = _own_renders(run, num=3)
    tracking = track_frames(run, frames, TrackConfig(steps=1, landmark_steps=5), avatar=avatar)
    cov = tracking.info["coverage"]  # the identity frame has none; the model's own renders
    assert cov[0] is None and all(c > 0.8 for c in cov[1:]), cov  # are covered
    assert "low_coverage_frames" not in tracking.info
    # finding #18: track.lr=1e30 wrote NaN into the tracking file with exit status 0
    with pytest.raises(NonFiniteError, match=r"track landmark steps, step 2/5: .*learning "
                       r"rate track\.lr=1e\+30 \(default 0\.1\)"):  # fmt: skip
        track_frames(run, frames, TrackConfig(steps=1, landmark_steps=5, lr=1e30), avatar=avatar)
    with pytest.raises(NonFiniteError, match=r"weight track\.landmark=1e\+308"):
        track_frames(run, frames, TrackConfig(steps=1, landmark=1e308), avatar=avatar)


def test_tracking_round_trip_and_damaged_files(run, tmp_path):
    frames, _, avatar = _own_renders(run, num=3)
    tracking = track_frames(run, frames, TrackConfig(steps=1), avatar=avatar)
    tracking.save(tmp_path / "t")
    back = Tracking.load(tmp_path / "t", run.model)
    assert torch.equal(back.z_exp, tracking.z_exp) and back.carried == tracking.carried
    assert torch.equal(back.avatar.z_id, avatar.z_id)
    meta = json.loads((tmp_path / "t/tracking.json").read_text())
    meta["num_frames"] = 5
    (tmp_path / "t/tracking.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tracking.safetensors: field 'z_exp' has shape"):
        Tracking.load(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="not a tracking"):
        Tracking.load(tmp_path)


def test_landmark_jitter_is_the_mean_acceleration():
    steady = torch.arange(5.0)[:, None, None].expand(5, 2, 2)  # constant velocity
    assert landmark_jitter(steady) == pytest.approx(0.0)
    spike = torch.zeros(5, 1, 2)
    spike[2, 0, 0] = 3.0  # accelerations 3, -6, 3 along x
    assert landmark_jitter(spike) == pytest.approx(4.0)
    assert landmark_jitter(torch.zeros(2, 3, 2)) is None


class _Detector:
    """Returns fixed landmarks; raises NoFaceError on blank (white) frames."""

    name = "stub"

    def __init__(self, uv):
        self.uv = np.asarray(uv, np.float64)

    def detect(self, image, source=None):
        if image.min() == 255:
            raise NoFaceError(source)
        H, W = image.shape[:2]
        return Detection(self.uv, np.array([0.0, 0.0, W, H]), None, (H, W))


def test_video_frames_without_a_face_are_kept_and_flagged(sequence, tmp_path):
    frames, _, _ = frames_from_dataset(sequence, "seq_001")
    folder = tmp_path / "video"
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray((f.image.numpy() * 255).round().astype(np.uint8)).save(folder / f"{t}.png")
    Image.new("RGB", (32, 32), "white").save(folder / "2.png")  # nobody in frame 2
    video = frames_from_video(folder, 32, detector=_Detector(frames[0].landmarks.numpy()))
    assert [f.landmarks is None for f in video] == [False, False, True, False]
    assert video[2].info["no_face"] and video[0].info["file"] == "0.png"
    assert video[0].image.shape == (32, 32, 3) and video[0].mask.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="a folder without"):
        frames_from_video(tmp_path, 32, detector=_Detector(frames[0].landmarks.numpy()))


def _run(args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=600)  # fmt: skip


@pytest.mark.slow  # six CLI processes (~2 s of imports each)
def test_track_video_and_reenact_clis(run, sequence, tmp_path):
    out = tmp_path / "track"
    opts = ["track.steps=2", "track.fit.phase1_steps=4", "track.fit.phase2_steps=1",
            "track.fit.min_coverage=0"]  # the run's heads are not the sequence's (FAST)
    res = _run([ROOT / "scripts/track_video.py", f"checkpoint={run.path}", f"data={sequence}",
                "subject=seq_001", f"out={out}", *opts])  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    for key in ("seconds_per_frame", "landmark_error_px", "jitter", "jitter_input"):
        assert isinstance(rep[key], float), key
    assert len(rep["landmark_error_px_per_frame"]) == 4 and rep["carried_frames"] == []
    for name in ("tracking.safetensors", "tracking.json", "overlay.mp4", "avatar/avatar.json",
                 "frames/00003.png"):  # fmt: skip
        assert (out / name).is_file(), name
    again = _run([ROOT / "scripts/track_video.py", f"checkpoint={run.path}", f"data={sequence}",
                  "subject=seq_001", f"out={out}"])  # fmt: skip
    assert again.returncode == 2 and "overwrite=true" in again.stderr

    re = tmp_path / "re"
    res = _run([ROOT / "scripts/reenact.py", f"checkpoint={run.path}", f"driver={out}",
                "target=b", f"out={re}"])  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((re / "report.json").read_text())
    assert rep["num_frames"] == 4 and rep["side_by_side"] and rep["target"]["kind"] == "subject"
    assert (re / "reenact.mp4").is_file() and (re / "frames/00003.png").is_file()
    still = _run([ROOT / "scripts/reenact.py", f"checkpoint={run.path}", f"driver={out}",
                  f"target={out / 'avatar'}", f"out={tmp_path / 're2'}", "pose=target",
                  "size=64"])  # fmt: skip
    assert still.returncode == 0, still.stderr[-3000:]
    assert Image.open(tmp_path / "re2/frames/00000.png").size == (64, 64)
    bad = _run([ROOT / "scripts/reenact.py", f"checkpoint={run.path}", f"driver={out}",
                "target=nobody", f"out={tmp_path / 're3'}"])  # fmt: skip
    assert bad.returncode == 2 and "neither an avatar directory" in bad.stderr
    bad = _run([ROOT / "scripts/track_video.py", f"checkpoint={run.path}", f"out={tmp_path / 'x'}",
                f"video={tmp_path / 'missing.mp4'}"])  # fmt: skip
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr


def test_moved_pose_follows_the_true_head_motion(sequence):
    _, items, _ = frames_from_dataset(sequence, "seq_000")
    start, now = items[0], items[3]
    true0 = (start.head_R, start.head_T, float(start.head_scale))
    R, T, s = moved_pose(true0, start, now)
    torch.testing.assert_close(R, now.head_R, atol=1e-5, rtol=0)
    torch.testing.assert_close(T, now.head_T, atol=1e-5, rtol=0)
    # A camera-frame pose taken back to world coordinates.
    vm = start.viewmat
    Rc, Tc = vm[:3, :3] @ start.head_R, vm[:3, :3] @ start.head_T + vm[:3, 3]
    Rw, Tw, _ = camera_pose_to_world(Rc, Tc, 1.0, vm)
    torch.testing.assert_close(Rw, start.head_R, atol=1e-5, rtol=0)
    torch.testing.assert_close(Tw, start.head_T, atol=1e-5, rtol=0)


def test_evaluate_split_reenact_report(run, sequence, tmp_path):
    report = evaluate_reenact(run, sequence, "seq_000", FAST, save_dir=tmp_path)
    assert report["split"] == "reenact" and report["targets"] == ["seq_001"]
    assert report["n_self"] == 4 * 1 and report["n_cross"] == 4 * 2
    # Every option that changes the tracked codes is recorded (the figures are reproducible).
    for key in ("steps", "landmark_steps", "render_size", "lr", "code", "smooth", "pose_smooth"):
        assert report["track"][key] == getattr(FAST, key), key
    for kind in ("self", "cross"):
        for variant in ("", "_neutral"):
            for align in ("", "_scale_aligned"):
                for metric in ("psnr", "ssim"):
                    v = report[f"{kind}_{metric}{variant}{align}"]
                    assert isinstance(v, float) and math.isfinite(v), (kind, variant, align)
            assert isinstance(report[f"{kind}_gain_db{align}"], float)
    for key in ("seconds_per_frame", "jitter", "jitter_truth", "landmark_error_px"):
        assert isinstance(report[key], float), key
    assert report["per_subject"][0]["subject"] == "seq_001"
    assert (tmp_path / "side_by_side.png").is_file()
    # The driver's tracking is kept and drives reenact (the library call under reenact.py).
    assert report["tracking"] == "tracking/"
    driven = reenact_to_dir(run, str(tmp_path / "tracking"), "b", tmp_path / "re")
    assert driven["num_frames"] == 4 and (tmp_path / "re/reenact.mp4").is_file()
    rel = reenact_to_dir(run, str(tmp_path / "tracking"), "b", tmp_path / "rel",
                         transfer="relative")  # fmt: skip
    assert rel["transfer"] == "relative"
    first = torch.from_numpy(np.array(Image.open(tmp_path / "rel/frames/00000.png")))
    # Relative transfer at the driver's first frame is the target's own code.
    tracking = Tracking.load(tmp_path / "tracking")
    target = resolve_source("b", run)
    own, _ = reenact(target, Tracking(tracking.avatar, target.z_exp[None].expand(4, -1),
                                      tracking.head_R, tracking.head_T, tracking.K,
                                      tracking.landmarks, tracking.input_landmarks,
                                      tracking.carried, tracking.seconds, 0))  # fmt: skip
    assert (first.float() / 255 - own[0]).abs().max() < 1.5 / 255
    assert isinstance(report["cross_psnr_relative"], float)
    assert isinstance(report["cross_gain_db_relative_scale_aligned"], float)
    with pytest.raises(FileNotFoundError, match="neither a track_video.py output directory"):
        reenact_to_dir(run, str(tmp_path / "nope"), "b", tmp_path / "re2")
    # overwrite=true replaces an earlier tracking, never a folder of someone's files.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tracking"):
        track_video(run, tmp_path / "mine", data=str(sequence), subject="seq_000", config=FAST,
                    overwrite=True)  # fmt: skip
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"
    again = track_video(run, tmp_path / "tracking", data=str(sequence), subject="seq_001",
                        config=FAST, overwrite=True)  # fmt: skip
    assert again["source"]["subject"] == "seq_001"
    # The CLI branch: RUN/eval/reenact.json and the summary line.
    spec = importlib.util.spec_from_file_location("_h10_evaluate", ROOT / "scripts/evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = evaluate
    spec.loader.exec_module(evaluate)
    from gphm.training.config import DataConfig

    cfg = evaluate.EvaluateConfig(run_dir=str(run.path.parent), split="reenact", driver="seq_001",
                                  data=DataConfig(path=str(sequence)), track=FAST)  # fmt: skip
    result = evaluate.main(cfg)
    written = json.loads((run.path.parent / "eval/reenact.json").read_text())
    assert written["cross_psnr"] == result["cross_psnr"] and written["driver"] == "seq_001"
    assert "lpips_unavailable" not in written
    assert "cross PSNR" in evaluate._summary(result)
    with pytest.raises(ValueError, match="split=reenact needs driver=SUBJECT"):
        evaluate.EvaluateConfig(run_dir="x", split="reenact")


def _model_sequence(run, out, steps=4):
    """A sequence dataset rendered by the model itself (both subjects perform the same
    codes and head motion, 3 cameras, cam_00 frontal): every score has a known ceiling."""
    from gphm.data.format import write_dataset

    model = run.model
    K = intrinsics(1.2 * 32, 1.2 * 32, 16.0, 16.0)
    eyes = torch.tensor([[0.0, 0.0, 3.0], [-1.5, 0.3, 2.6], [1.5, -0.3, 2.6]])
    viewmats = look_at(eyes, torch.zeros(3, 3))
    std = model.expression_codes.std().detach()
    z0 = model.expression_codes.codes.weight[0].detach()
    z1 = z0 + 3.0 * std * torch.sign(
        torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    )
    rows, frames = [], []
    with torch.no_grad():
        for s in range(2):
            z_id = model.identity_codes.codes.weight[s].detach()
            for t in range(steps):
                w = t / (steps - 1)
                R = axis_angle_to_matrix(torch.tensor([0.0, math.radians(10) * w, 0.0]))
                T = torch.tensor([0.05 * w, 0.0, 0.0])
                n = len(eyes)
                z = (z0 + (z1 - z0) * w)[None].expand(n, -1)
                out_ = render_avatar(model, z_id[None].expand(n, -1), z, R.expand(n, 3, 3),
                                     T.expand(n, 3), torch.ones(n), viewmats,
                                     K.expand(n, 3, 3), 32)  # fmt: skip
                frame = s * steps + t
                frames.append({"subject": s, "expression": "neutral", "sequence_step": t})
                for c in range(n):
                    mask = out_.mask[c].repeat_interleave(2, 0).repeat_interleave(2, 1)
                    rows.append({
                        "subject": s, "subject_name": ["a", "b"][s], "frame": frame,
                        "expression": "neutral", "camera": f"cam_{c:02d}",
                        "image": (out_.rgb[c].clamp(0, 1).numpy() * 255).round().astype(np.uint8),
                        "mask": (mask[..., 0].numpy() * 255).round().astype(np.uint8),
                        "K": K.numpy(), "viewmat": viewmats[c].numpy(), "head_R": R.numpy(),
                        "head_T": T.numpy(), "head_scale": 1.0,
                        "landmarks_3d": out_.landmarks[c].numpy(), "split": "heldout_combo",
                        "sequence_step": t,
                    })  # fmt: skip
    meta = {
        "subjects": ["a", "b"], "expressions": ["neutral"],
        "cameras": ["cam_00", "cam_01", "cam_02"], "num_frames": 2 * steps, "frames": frames,
        "landmark_convention": "model", "image_size": [32, 32],
        "canonical_transform": {"scale": 1.0, "R": np.eye(3).tolist(), "T": [0.0, 0.0, 0.0]},
        "generator": {"kind": "tests/tracking"},
        "sequence": {"num_steps": steps, "driving_camera": "cam_00"},
    }  # fmt: skip
    return write_dataset(out, rows, meta)


def test_reenact_benchmark_reaches_the_ceiling_on_the_models_own_sequence(run, tmp_path):
    """Poses, cameras and codes are plumbed right: on frames the model rendered itself,
    the tracked driver reproduces its other cameras and drives the other subject closely."""
    data = _model_sequence(run, tmp_path / "own")
    cfg = TrackConfig(fit=FitConfig(phase1_steps=60, phase2_steps=0))
    report = evaluate_reenact(run, data, "a", cfg)
    assert report["self_psnr"] > 28, report["self_psnr"]
    assert report["cross_psnr"] > 24, report["cross_psnr"]
    assert report["landmark_error_px"] < 0.5
