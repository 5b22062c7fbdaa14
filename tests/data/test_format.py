import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gphm.data.format import FEATURES, load_dataset_dir, validate_meta, write_dataset
from tests.data._tiny import CAMERAS, FRAMES, NUM_LANDMARKS, H, W, tiny_meta, tiny_rows


def _hashes(path: Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("fmt") / "tiny", tiny_rows(), tiny_meta())


def test_round_trip(tiny_dir):
    ds, meta = load_dataset_dir(tiny_dir)
    assert len(ds) == len(FRAMES) * len(CAMERAS)
    assert set(ds.column_names) == set(FEATURES)
    assert meta["num_rows"] == len(ds) and meta["num_landmarks"] == NUM_LANDMARKS
    assert meta["split_sizes"] == {
        "train": 8,
        "val_view": 0,
        "val_combo": 0,
        "heldout_view": 4,
        "heldout_combo": 0,
    }
    ref = list(tiny_rows())
    row = ds[4]
    assert row["camera"] == ref[4]["camera"] and row["frame"] == ref[4]["frame"]
    np.testing.assert_array_equal(np.asarray(row["image"]), ref[4]["image"])
    np.testing.assert_array_equal(np.asarray(row["mask"]), ref[4]["mask"])
    assert row["image"].mode == "RGB" and row["mask"].mode == "L"
    np.testing.assert_allclose(row["viewmat"], ref[4]["viewmat"], atol=1e-6)
    np.testing.assert_allclose(row["landmarks_3d"], ref[4]["landmarks_3d"], atol=1e-6)
    assert np.asarray(row["landmarks_3d"]).shape == (NUM_LANDMARKS, 3)


def test_byte_identical(tmp_path, tiny_dir):
    again = write_dataset(tmp_path / "again", tiny_rows(), tiny_meta())
    assert _hashes(again) == _hashes(tiny_dir)
    other = write_dataset(tmp_path / "other", tiny_rows(seed=1), tiny_meta())
    assert (
        _hashes(other)["data-00000-of-00001.arrow"]
        != _hashes(tiny_dir)["data-00000-of-00001.arrow"]
    )


def test_pil_inputs_and_meta_subject_names(tmp_path):
    def rows():
        for r in tiny_rows():
            yield r | {"image": Image.fromarray(r["image"]), "mask": r["mask"] > 0}

    frames = [{"subject": ["alice", "bob"][s], "expression": e} for s, e in FRAMES]
    out = write_dataset(tmp_path / "pil", rows(), tiny_meta(frames=frames))
    _, meta = load_dataset_dir(out)
    assert [f["subject"] for f in meta["frames"]] == [s for s, _ in FRAMES]


def _with(index: int, **changes):
    def gen():
        for i, r in enumerate(tiny_rows()):
            yield r | changes if i == index else r

    return gen()


@pytest.mark.parametrize(
    "index, changes, match",
    [
        (2, {"K": np.eye(4)}, r"row 2: field 'K' has shape \(4, 4\), expected \(3, 3\)"),
        (3, {"split": "test"}, r"row 3: field 'split' is 'test'"),
        (1, {"camera": "cam_z"}, r"row 1: field 'camera' 'cam_z' is not in meta cameras"),
        (0, {"subject": 2}, r"row 0: field 'subject' is 2, expected in \[0, 2\)"),
        (0, {"subject_name": "carol"}, r"row 0: field 'subject_name'"),
        (4, {"expression": "angry"}, r"row 4: field 'expression'"),
        (1, {"head_R": 2 * np.eye(3)}, r"row 1: field 'head_R' must be a rotation"),
        (1, {"head_scale": -1.0}, r"row 1: field 'head_scale' is -1.0, expected > 0"),
        (1, {"landmarks_3d": np.zeros((4, 3))}, r"row 1: field 'landmarks_3d' has 4 landmarks"),
        (1, {"landmarks_3d": np.zeros((5, 2))}, r"row 1: field 'landmarks_3d' has shape"),
        (2, {"viewmat": np.full((4, 4), np.nan)}, r"row 2: field 'viewmat' has non-finite"),
        (2, {"image": np.zeros((H, W, 3), np.float32)}, r"row 2: field 'image' is float32"),
        (2, {"image": np.zeros((H + 1, W, 3), np.uint8)}, r"row 2: field 'image' is 9x12"),
        (2, {"mask": Image.new("RGB", (W, H))}, r"row 2: field 'mask' is a PIL image of mode"),
        (
            5,
            {"frame": 0, "expression": "neutral"},
            r"row 5: field 'camera' \(frame 0, camera 'cam_c'\) already",
        ),
    ],
)
def test_row_errors_name_row_and_field(tmp_path, index, changes, match):
    with pytest.raises(ValueError, match=match):
        write_dataset(tmp_path / "bad", _with(index, **changes), tiny_meta())
    assert not (tmp_path / "bad").exists() and _leftovers(tmp_path) == []


def test_missing_and_extra_fields(tmp_path):
    rows = list(tiny_rows())
    del rows[1]["K"]
    rows[1]["colour"] = 1
    with pytest.raises(ValueError, match=r"row 1: missing fields \['K'\], unexpected .*'colour'"):
        write_dataset(tmp_path / "bad", rows, tiny_meta())


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"format_version": 99}, "unknown format_version 99"),
        ({"num_frames": 3}, "'frames' must be a list of num_frames=3"),
        ({"image_size": [8]}, "'image_size' must be"),
        ({"cameras": ["a", "a"]}, r"'cameras' has duplicate names \['a'\]"),
        ({"canonical_transform": {"scale": 0, "R": np.eye(3), "T": [0, 0, 0]}}, "scale"),
    ],
)
def test_meta_errors(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        write_dataset(tmp_path / "bad", tiny_rows(), tiny_meta(**changes))
    meta = tiny_meta()
    del meta["generator"]
    with pytest.raises(ValueError, match=r"missing keys \['generator'\]"):
        validate_meta(meta)


def test_existing_dataset_refused_and_kept_on_failure(tmp_path, tiny_dir):
    out = tmp_path / "ds"
    write_dataset(out, tiny_rows(), tiny_meta())
    before = _hashes(out)
    with pytest.raises(FileExistsError, match="already exists"):
        write_dataset(out, tiny_rows(seed=3), tiny_meta())
    with pytest.raises(RuntimeError, match="generator failed"):
        write_dataset(out, tiny_rows(seed=3, fail_at=7), tiny_meta(), overwrite=True)
    with pytest.raises(ValueError, match="row 3"):
        write_dataset(out, _with(3, split="nope"), tiny_meta(), overwrite=True)
    assert _hashes(out) == before and _leftovers(tmp_path) == []
    write_dataset(out, tiny_rows(seed=3), tiny_meta(), overwrite=True)
    assert _hashes(out) != before and _leftovers(tmp_path) == []


def test_load_errors_name_the_path(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_dataset_dir(tmp_path / "nowhere")

    def broken(name: str) -> Path:
        out = tmp_path / name
        write_dataset(out, tiny_rows(), tiny_meta())
        return out

    d = broken("no_meta")
    (d / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_meta/meta.json: missing"):
        load_dataset_dir(d)

    d = broken("bad_json")
    (d / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad_json/meta.json: not valid JSON"):
        load_dataset_dir(d)

    d = broken("future")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps(meta | {"format_version": 2}))
    with pytest.raises(ValueError, match=r"future/meta.json: unknown format_version 2"):
        load_dataset_dir(d)

    d = broken("no_arrow")
    (d / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_arrow/data-00000-of-00001.arrow"):
        load_dataset_dir(d)

    d = broken("truncated")
    arrow = d / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated: cannot read the arrow data"):
        load_dataset_dir(d)

    d = broken("no_state")
    (d / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_state/state.json: missing"):
        load_dataset_dir(d)


# ----------------------------------------------------------------------------- validation


def _with(row_index: int, **fields):
    for i, row in enumerate(tiny_rows()):
        yield row | fields if i == row_index else row


def test_writer_refuses_a_camera_that_does_not_see_the_head(tmp_path):
    V = np.asarray(next(_with(0))["viewmat"])
    away = np.diag([-1.0, 1.0, -1.0, 1.0]) @ V  # turned around: the head is behind it
    with pytest.raises(
        ValueError,
        match=r"row 4: field 'viewmat' camera does not see the head: head centre is behind "
        r".*\(subject 'alice', camera 'cam_b'\)",
    ):
        write_dataset(tmp_path / "a", _with(4, viewmat=away), tiny_meta())
    aside = V.copy()
    aside[0, 3] += 50.0  # head far to the left of the image
    with pytest.raises(ValueError, match=r"row 3: .*does not see the head: head projects to"):
        write_dataset(tmp_path / "b", _with(3, viewmat=aside), tiny_meta())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _rewrite(src: Path, out: Path, edit) -> Path:
    """Copy of the dataset at ``src`` with ``edit(row_index, row)`` applied, written by
    ``datasets`` directly (bypassing our writer's checks), as a foreign tool could."""
    ds, _ = load_dataset_dir(src)
    ds.map(lambda r, i: edit(i, r), with_indices=True, features=FEATURES).save_to_disk(str(out))
    (out / "meta.json").write_text((src / "meta.json").read_text())
    return out


@pytest.mark.parametrize(
    "field", ["K", "viewmat", "head_R", "head_T", "head_scale", "landmarks_3d"]
)
def test_reading_refuses_non_finite_rows(tiny_dir, tmp_path, field):
    def poison(i, r):
        if i == 7:
            v = np.asarray(r[field], dtype=np.float32)
            r[field] = np.where(np.arange(v.size).reshape(v.shape) == 0, np.nan, v).tolist()
        return r

    bad = _rewrite(tiny_dir, tmp_path / "bad", poison)
    subject = ["alice", "bob"][FRAMES[7 // len(CAMERAS)][0]]
    camera = CAMERAS[7 % len(CAMERAS)]
    with pytest.raises(
        ValueError,
        match=rf"bad: row 7 \(subject '{subject}', camera '{camera}'\): field '{field}' has "
        "non-finite values",
    ):
        load_dataset_dir(bad)
    assert load_dataset_dir(_rewrite(tiny_dir, tmp_path / "good", lambda i, r: r))[0].num_rows


@pytest.mark.parametrize("name", ["../outside.arrow", "/tmp/outside.arrow", "a/../../x.arrow"])
def test_reading_refuses_data_files_outside_the_dataset(tmp_path, name):
    d = write_dataset(tmp_path / "ds", tiny_rows(), tiny_meta())
    state = json.loads((d / "state.json").read_text())
    state["_data_files"][0]["filename"] = name
    (d / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"ds/state.json: data file .* (leaves|outside)"):
        load_dataset_dir(d)


def test_overwrite_replaces_only_a_dataset(tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "me.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match=r"photos is a non-empty folder that is not a gphm"):
        write_dataset(user, tiny_rows(), tiny_meta(), overwrite=True)
    assert [p.name for p in user.iterdir()] == ["me.jpg"]
    ds = write_dataset(tmp_path / "ds", tiny_rows(), tiny_meta())
    write_dataset(ds, tiny_rows(seed=1), tiny_meta(), overwrite=True)  # a dataset: replaced
    (tmp_path / "empty").mkdir()
    write_dataset(tmp_path / "empty", tiny_rows(), tiny_meta(), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        write_dataset(tmp_path / "file", tiny_rows(), tiny_meta(), overwrite=True)


def _landmarks(n):
    return lambda r: np.asarray(r["landmarks_3d"], np.float32)[:n].tolist()


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("K", lambda r: [[0.0, 0.0, 6.0], [0.0, 0.0, 4.0], [0.0, 0.0, 1.0]],
         r"field 'K' is .*with fx, fy > 0"),
        ("frame", lambda r: 999, r"field 'frame' is 999, expected in \[0, 4\)"),
        ("subject", lambda r: 7, r"field 'subject' is 7, expected in \[0, 2\)"),
        ("subject", lambda r: 1 - r["subject"], r"field 'subject' is \d, meta.json frames"),
        ("subject_name", lambda r: "carol", r"field 'subject_name' is 'carol'"),
        ("expression", lambda r: "frown", r"field 'expression' is 'frown'"),
        ("camera", lambda r: "cam_z", r"field 'camera' is 'cam_z', not one of"),
        ("split", lambda r: "bogus", r"field 'split' is 'bogus', expected one of \['train'"),
        ("landmarks_3d", _landmarks(2), rf"field 'landmarks_3d' has 2 landmarks, meta.json "
         rf"num_landmarks is {NUM_LANDMARKS}"),
        ("head_scale", lambda r: 0.0, r"field 'head_scale' is 0.0, expected > 0"),
        ("head_R", lambda r: (2 * np.eye(3)).tolist(), r"field 'head_R' must be a rotation"),
        ("viewmat", lambda r: (2 * np.eye(4)).tolist(), r"field 'viewmat' must be rigid"),
    ],
)  # fmt: skip
def test_reading_checks_what_the_writer_checks(tiny_dir, tmp_path, field, value, match):
    # issue 28 finding 7: finite but inconsistent rows, written by another tool
    def edit(i, r):
        if i == 7:
            r[field] = value(r)
        return r

    bad = _rewrite(tiny_dir, tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=rf"bad: row 7 \(subject '\w+', camera 'cam_\w'\): "
                       rf"{match}"):  # fmt: skip
        load_dataset_dir(bad)


def test_reading_refuses_a_state_json_without_data_files(tmp_path):
    d = write_dataset(tmp_path / "ds", tiny_rows(), tiny_meta())
    state = json.loads((d / "state.json").read_text())
    state["_data_files"] = []
    (d / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"ds/state.json: lists no data files"):
        load_dataset_dir(d)
