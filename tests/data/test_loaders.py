import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gphm.data.format import write_dataset
from gphm.data.loaders import DistributedFrameSampler, HeadBatch, HeadDataset, collate_views
from gphm.geometry.cameras import project_points
from gphm.io.images import box_downsample
from tests.data._tiny import CAMERAS, FRAMES, NUM_LANDMARKS, H, W, tiny_meta, tiny_rows


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ld") / "tiny", tiny_rows(), tiny_meta())


@pytest.mark.parametrize("lr_size", [None, 4, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batch_shapes(tiny_dir, lr_size, batch_size):
    ds = HeadDataset(tiny_dir, lr_size=lr_size)
    h = lr_size or H
    w = round(W * h / H)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_views)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(ds) == len(FRAMES) * (len(CAMERAS) - 1)
    b = batches[0]
    B = min(batch_size, len(ds))
    assert isinstance(b, HeadBatch) and len(b) == B
    expect = {
        "image": (B, H, W, 3),
        "mask": (B, H, W, 1),
        "image_lr": (B, h, w, 3),
        "mask_lr": (B, h, w, 1),
        "K": (B, 3, 3),
        "K_lr": (B, 3, 3),
        "viewmat": (B, 4, 4),
        "head_R": (B, 3, 3),
        "head_T": (B, 3),
        "head_scale": (B,),
        "landmarks_3d": (B, NUM_LANDMARKS, 3),
        "subject": (B,),
        "frame": (B,),
        "row": (B,),
    }
    for name, shape in expect.items():
        t = getattr(b, name)
        assert tuple(t.shape) == shape, name
        assert t.dtype == (torch.int64 if name in ("subject", "frame", "row") else torch.float32)
    assert len(b.camera) == B and len(b.expression) == B and isinstance(b.camera[0], str)
    assert b.to("cpu").image.shape == b.image.shape


def test_splits_and_metadata(tiny_dir):
    train = HeadDataset(tiny_dir)
    held = HeadDataset(tiny_dir, split="heldout_view")
    both = HeadDataset(tiny_dir, split=["train", "heldout_view"])
    assert len(train) == 8 and len(held) == 4 and len(both) == 12
    assert {held[i].camera for i in range(len(held))} == {CAMERAS[-1]}
    assert train.num_frames == len(FRAMES) and train.num_subjects == 2
    item = both[5]
    assert int(item.frame) == 1 and item.camera == CAMERAS[2] and int(item.row) == 5
    assert item.expression == FRAMES[1][1] and int(item.subject) == FRAMES[1][0]
    with pytest.raises(ValueError, match="split must be one or more of"):
        HeadDataset(tiny_dir, split="test")
    with pytest.raises(ValueError, match="no rows in split"):
        HeadDataset(tiny_dir, split="heldout_combo")
    with pytest.raises(ValueError, match="lr_size must be"):
        HeadDataset(tiny_dir, lr_size=H + 1)
    with pytest.raises(ValueError, match=r"no rows in split\(s\) \['val_view'\].*regenerate"):
        HeadDataset(tiny_dir, split="val_view")


def test_all_five_splits(tmp_path):
    def rows():  # frame 3 a held-out pair, frame 2 a val pair, cam_c held out, cam_b val
        for r in tiny_rows():
            cam = CAMERAS.index(r["camera"])
            r["split"] = (
                "heldout_combo" if r["frame"] == 3
                else "val_combo" if r["frame"] == 2
                else ["train", "val_view", "heldout_view"][cam]
            )  # fmt: skip
            yield r

    path = write_dataset(tmp_path / "five", rows(), tiny_meta())
    sizes = {"train": 2, "val_view": 2, "heldout_view": 2, "val_combo": 3, "heldout_combo": 3}
    for split, n in sizes.items():
        ds = HeadDataset(path, split=split)
        assert len(ds) == n, split
    val = HeadDataset(path, split=["val_view", "val_combo"])
    assert len(val) == 5 and {int(f) for f in val.frames} == {0, 1, 2}
    assert {val[i].camera for i in range(len(val)) if int(val[i].frame) < 2} == {"cam_b"}


def test_white_background_compositing(tiny_dir):
    ds = HeadDataset(tiny_dir, cache=False)
    ref = list(tiny_rows())[0]
    item = ds[0]
    m = ref["mask"][..., None] / 255.0
    expected = ref["image"] / 255.0 * m + (1 - m)
    np.testing.assert_allclose(item.image.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(item.mask.numpy(), m, atol=1e-6)
    assert torch.all(item.image[item.mask[..., 0] == 0] == 1.0)
    assert 0 <= item.image.min() and item.image.max() <= 1


def test_lr_is_box_average(tiny_dir):
    item = HeadDataset(tiny_dir, lr_size=H // 2)[0]
    blocks = item.image.reshape(H // 2, 2, W // 2, 2, 3).mean(dim=(1, 3))
    np.testing.assert_allclose(item.image_lr.numpy(), blocks.numpy(), atol=1e-6)
    x = torch.rand(6, 9, 2)
    np.testing.assert_allclose(
        box_downsample(x, (2, 3)).numpy(), x.reshape(2, 3, 3, 3, 2).mean((1, 3)).numpy(), atol=1e-6
    )


@pytest.mark.parametrize("lr_size", [4, 2, 3])
def test_K_lr_consistent_with_projection(tiny_dir, lr_size):
    b = collate_views([HeadDataset(tiny_dir, lr_size=lr_size)[i] for i in range(3)])
    uv, depth = project_points(b.landmarks_3d, b.viewmat, b.K)
    uv_lr, _ = project_points(b.landmarks_3d, b.viewmat, b.K_lr)
    h, w = b.image_lr.shape[1:3]
    assert (depth > 0).all()
    np.testing.assert_allclose(
        uv_lr.numpy(), (uv * torch.tensor([w / W, h / H])).numpy(), atol=1e-4
    )


def test_cache_returns_same_item(tiny_dir):
    ds = HeadDataset(tiny_dir, cache=True)
    assert ds[2] is ds[2]
    assert HeadDataset(tiny_dir, cache=False)[2] is not HeadDataset(tiny_dir, cache=False)[2]


def _steps(n, world, batch, seed=0, epoch=0):
    """Global batches (as sets) per step for `world` processes with per-process `batch`."""
    per_rank = []
    for r in range(world):
        s = DistributedFrameSampler(n, num_replicas=world, rank=r, seed=seed)
        s.set_epoch(epoch)
        loader = DataLoader(list(range(n)), batch_size=batch, sampler=s)
        per_rank.append([b.tolist() for b in loader])
    return [sorted(sum(step, [])) for step in zip(*per_rank)]


@pytest.mark.parametrize("n", [8, 11])
def test_sampler_no_duplicates_and_padding(n):
    world = 3
    samplers = [DistributedFrameSampler(n, num_replicas=world, rank=r, seed=5) for r in range(3)]
    parts = [list(s) for s in samplers]
    assert all(len(p) == len(samplers[0]) == -(-n // world) for p in parts)
    flat = sum(parts, [])
    assert set(flat) == set(range(n))
    assert len(flat) - len(set(flat)) == (-n) % world  # only DistributedSampler-style padding
    dropped = [list(DistributedFrameSampler(n, world, r, drop_last=True)) for r in range(world)]
    flat = sum(dropped, [])
    assert len(flat) == len(set(flat)) == n - n % world


@pytest.mark.parametrize("world, batch", [(2, 1), (2, 2), (4, 1)])
def test_sampler_global_batch_invariant(world, batch):
    n = 16
    single = _steps(n, world=1, batch=world * batch, seed=3, epoch=1)
    multi = _steps(n, world=world, batch=batch, seed=3, epoch=1)
    assert multi == single


def test_sampler_set_epoch_changes_order_deterministically():
    s = DistributedFrameSampler(20, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(20))
    t = DistributedFrameSampler(20, seed=1)
    t.set_epoch(1)
    assert list(t) == e1
    assert list(DistributedFrameSampler(20, shuffle=False)) == list(range(20))
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedFrameSampler(20, num_replicas=2, rank=2)
