"""TrainedRun's resolver of trained expression codes, and the dataset fingerprint."""

import json
import re
from pathlib import Path

import pytest

from gphm.models.runs import ResolvedFrame, TrainedRun, dataset_fingerprint, seen_by

SUBJECTS = ["synth_000", "synth_001", "synth_002"]
LABELS = ["neutral", "smile", "jaw_open"]


def _run(train_frames=None, drop_key=False) -> TrainedRun:
    """3 subjects x 3 labels, frame = 3 * subject + label index. By default synth_000's
    smile (frame 1) and all of synth_002's jaw_open (frame 8) are held out (untrained)."""
    frames = [{"subject": s, "expression": e} for s in range(3) for e in LABELS]
    extra = {"subjects": SUBJECTS, "frames": frames}
    if not drop_key:
        extra["train_frames"] = train_frames if train_frames is not None else [
            0, 2, 3, 4, 5, 6, 7
        ]  # fmt: skip
    return TrainedRun(model=None, extra=extra, path=Path("RUN/model"))


def test_own_trained_frame_first():
    r = _run().trained_frame(1, "smile")
    assert r == ResolvedFrame(4, 1, "synth_001", "smile", borrowed=False)
    assert r.describe() == "expression from synth_001@4"


def test_an_untrained_own_frame_is_never_used_the_lowest_other_subject_lends_one():
    run = _run()
    r = run.trained_frame(0, "smile")  # frame 1 exists but was never trained
    assert (r.frame, r.subject, r.borrowed) == (4, 1, True)
    assert r.describe() == "expression from synth_001@4"
    r = run.trained_frame(2, "jaw_open")  # own frame 8 untrained; synth_000 lends frame 2
    assert (r.frame, r.subject, r.borrowed) == (2, 0, True)
    assert run.trained_frame(None, "smile").frame == 4  # nobody asks: not "borrowed"
    assert not run.trained_frame(None, "smile").borrowed


def test_unknown_or_untrained_labels_and_frames_name_the_trained_labels():
    run = _run(train_frames=[0, 3, 4])  # no trained jaw_open anywhere
    with pytest.raises(ValueError, match=r"no trained frame shows expression 'jaw_open'.*"
                                         r"\['neutral', 'smile'\]"):  # fmt: skip
        run.trained_frame(0, "jaw_open")
    with pytest.raises(ValueError, match="no trained frame shows expression 'frown'"):
        run.resolve_frame(0, expression="frown")
    with pytest.raises(ValueError, match=r"synth_000@2: frame 2 was not trained.*"
                                         r"synth_000's trained labels: \['neutral'\]"):  # fmt: skip
        run.resolve_frame(0, frame=2)
    with pytest.raises(ValueError, match=r"frame 9 out of range \[0, 9\)"):
        run.frame_index(0, frame=9)
    with pytest.raises(ValueError, match="subject 'synth_002' has no trained frame"):
        run.resolve_frame(2)


def test_defaults_and_frame_index_keep_working():
    run = _run()
    assert run.frame_index(0) == 0 and run.frame_index(2) == 6
    assert run.frame_index(0, frame=4) == 4  # another subject's trained frame, named
    assert run.resolve_frame(0, frame=4).borrowed
    assert run.frame_index(1, expression="jaw_open") == 5
    assert run.trained_labels() == ["neutral", "jaw_open", "smile"]  # frame order
    assert run.trained_labels(0) == ["neutral", "jaw_open"]
    run.extra["expressions"] = LABELS  # the dataset's order when recorded
    assert run.trained_labels() == LABELS
    assert run.trained_subjects == [0, 1, 2]
    assert run.train_frames_note is None and run.resolve_frame(0).note is None


def test_older_runs_without_train_frames_take_every_frame_as_trained_with_a_note():
    run = _run(drop_key=True)
    assert run.train_frames == list(range(9))
    r = run.trained_frame(0, "smile")
    assert (r.frame, r.borrowed) == (1, False)
    assert "does not record train_frames" in r.note


def _dataset_dir(tmp_path, name, meta, indent=None):
    d = tmp_path / name
    d.mkdir()
    (d / "meta.json").write_text(json.dumps(meta, indent=indent))
    return d


def test_fingerprint_and_seen_datasets(tmp_path):
    meta = {"subjects": SUBJECTS, "frames": _run().frames, "generator": {"seed": 0}}
    other = meta | {"generator": {"seed": 1}}
    data = _dataset_dir(tmp_path, "data", meta)
    same = _dataset_dir(tmp_path, "same", dict(reversed(meta.items())), indent=2)
    unseen = _dataset_dir(tmp_path, "unseen", other)
    assert dataset_fingerprint(data) == dataset_fingerprint(same)  # layout does not count
    assert dataset_fingerprint(data) != dataset_fingerprint(unseen)
    run = _run()
    run.extra["dataset_fingerprint"] = dataset_fingerprint(data)
    assert "trained on" in seen_by(run, same, meta)
    assert seen_by(run, unseen, other) is None  # same synthetic names, other people
    older = _run(drop_key=True)  # no fingerprint: same subjects and frames count as seen
    assert seen_by(older, unseen, other) is not None
    assert seen_by(older, unseen, other | {"subjects": ["x", "y", "z"]}) is None
    imported = {"subjects": ["p017", "synth_001"], "generator": {"importer": "nersemble"}}
    assert "synth_001" in seen_by(run, unseen, imported)
    with pytest.raises(FileNotFoundError, match=r"nowhere/meta.json: missing"):
        dataset_fingerprint(tmp_path / "nowhere")


def test_trained_subject_is_the_one_identity_resolver():
    run = _run(train_frames=[0, 3, 4])  # synth_002 has no trained frame
    assert run.trained_subject("synth_001") == 1 and run.trained_subject(1) == 1
    assert run.trained_subject("0") == 0
    listing = re.escape("trained identities: ['synth_000', 'synth_001']")
    with pytest.raises(ValueError, match=r"^unknown identity 'zz'; " + listing):
        run.trained_subject("zz", "identity", "identities")
    with pytest.raises(ValueError, match=r"subject 7: subject index 7 out of range"):
        run.trained_subject(7)
    with pytest.raises(ValueError, match=r"expected a subject name or index"):
        run.trained_subject(True)
    with pytest.raises(ValueError, match="subject 'synth_002' has no trained frame, so its"):
        run.trained_subject("synth_002")


def test_one_fingerprint_follows_rows_not_layout_and_old_records_are_not_compared(tmp_path):
    from gphm.models.runs import fingerprint_comparable
    from gphm.training.run_dir import dataset_dir_fingerprint

    meta = {"subjects": SUBJECTS, "frames": _run().frames, "generator": {"seed": 0}}
    a = _dataset_dir(tmp_path, "a", meta)
    b = _dataset_dir(tmp_path, "b", dict(reversed(meta.items())), indent=2)
    for d, rows in ((a, "abc"), (b, "abc")):
        (d / "state.json").write_text(json.dumps({"_fingerprint": rows, "_split": None}))
    assert dataset_fingerprint(a) == dataset_fingerprint(b) == dataset_dir_fingerprint(a)
    assert dataset_fingerprint(a).startswith("v2-")
    (b / "state.json").write_text(json.dumps({"_fingerprint": "abd", "_split": None}))
    assert dataset_fingerprint(a) != dataset_fingerprint(b)  # other rows, same meta.json
    assert fingerprint_comparable(dataset_fingerprint(a)) and fingerprint_comparable("fp")
    assert not fingerprint_comparable("0123456789abcdef") and not fingerprint_comparable(None)
    old = _run()
    old.extra["dataset_fingerprint"] = "0123456789abcdef"  # an older formula's record
    assert "subjects and frames" in seen_by(old, a, meta)  # falls back to names and frames
    from gphm.evaluation.common import check_trained_dataset

    assert "older formula" in check_trained_dataset(old, a, "val_view")["dataset_unverified"]
    old.extra["dataset_fingerprint"] = dataset_fingerprint(b)
    assert check_trained_dataset(old, b, "val_view") == {}
