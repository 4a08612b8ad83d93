"""The HumanML3D-layout reader on a tiny on-the-fly fixture built around the real sample 012314."""
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdm.data.humanml3d import (
    DataError, MotionDataset, collate, contact_map, load_contact_file, parse_caption_line, read_captions,
)

SAMPLE = Path(__file__).parent / "data" / "humanml3d_sample"
JOINTS = [0, 10, 11, 12, 20, 21]


def write_motion(root, motion_id, motion, lines, n_points=50, seed=0):
    (root / "new_joint_vecs" / f"{motion_id}.npy").parent.mkdir(parents=True, exist_ok=True)
    np.save(root / "new_joint_vecs" / f"{motion_id}.npy", motion.astype(np.float32))
    (root / "texts").mkdir(exist_ok=True)
    (root / "texts" / f"{motion_id}.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(seed)
    (root / "contacts").mkdir(exist_ok=True)
    np.savez(root / "contacts" / f"{motion_id}.npz",
             points=rng.uniform(-1, 1, (n_points, 3)).astype(np.float32),
             dist=rng.uniform(0, 2, (n_points, 22)).astype(np.float32))


@pytest.fixture
def root(tmp_path):
    """Four motions: the real sample (170 frames, whole + two sub-clips), too short, plain 120, too long."""
    real = np.load(SAMPLE / "new_joint_vecs" / "012314.npy")
    rng = np.random.default_rng(1)
    for name in ("Mean.npy", "Std.npy"):
        (tmp_path / name).write_bytes((SAMPLE / name).read_bytes())
    write_motion(tmp_path, "012314", real, [
        "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0",
        "someone strolls ahead#someone/PRON stroll/VERB ahead/ADV#0.0#0.0",
        "a person takes steps#a/DET person/NOUN take/VERB step/NOUN#1.0#4.0",      # 60 frames: kept
        "a person pauses#a/DET person/NOUN pause/VERB#0.5#1.0",                    # 10 frames: filtered
    ])
    write_motion(tmp_path, "000002", rng.normal(size=(30, 263)), ["short#short/ADJ#0.0#0.0"])
    write_motion(tmp_path, "000003", rng.normal(size=(121, 263)), ["a man jumps#a/DET man/NOUN jump/VERB#nan#nan"])
    write_motion(tmp_path, "000004", rng.normal(size=(250, 263)), ["long#long/ADJ#0.0#0.0"])
    (tmp_path / "train.txt").write_text("012314\n000002\n000003\n000004\n")
    (tmp_path / "test.txt").write_text("012314\n000003\n")
    return tmp_path


def make(root, split="train", **kw):
    kw.setdefault("contact_num_points", 64)
    kw.setdefault("progress", False)
    return MotionDataset(root, split, **kw)


# ---------------------------------------------------------------- captions

def test_parse_caption_line_fields_and_whole_clip():
    cap = parse_caption_line("a man kicks.#a/DET man/NOUN kick/VERB#0.0#0.0", "t.txt", 1)
    assert cap.text == "a man kicks." and cap.tokens == ("a/DET", "man/NOUN", "kick/VERB") and cap.whole_clip
    sub = parse_caption_line("x#x/NOUN#1.5#3.25", "t.txt", 2)
    assert (sub.start, sub.end, sub.whole_clip) == (1.5, 3.25, False)
    assert parse_caption_line("x#x/NOUN#nan#nan", "t.txt", 3).whole_clip


@pytest.mark.parametrize("line, words", [
    ("no separators at all", ["t.txt, line 7", "4 '#'-separated"]),
    ("a#a/DET#zero#1.0", ["t.txt, line 7", "seconds"]),
    ("a man#a man/NOUN#0.0#0.0", ["t.txt, line 7", "word/POS", "'a'"]),
])
def test_parse_caption_line_errors_name_file_and_line(line, words):
    with pytest.raises(DataError) as err:
        parse_caption_line(line, "t.txt", 7)
    for w in words:
        assert w in str(err.value)


def test_real_humanml3d_caption_format_round_trips(tmp_path):
    text = ("a man kicks something or someone with his left leg.#a/DET man/NOUN kick/VERB something/PRON "
            "or/CCONJ someone/PRON with/ADP his/DET left/ADJ leg/NOUN#0.0#0.0\n")
    (tmp_path / "c.txt").write_text(text)
    (cap,) = read_captions(tmp_path / "c.txt")
    assert len(cap.tokens) == 10 and cap.tokens[-1] == "leg/NOUN"


# ---------------------------------------------------------------- dataset

def test_length_filter_and_subclips(root):
    ds = make(root)
    names = sorted(e.name for e in ds.entries)
    # 012314 whole + its 1.0-4.0 s sub-clip; 000003 whole (NaN times); 000002 (30) and 000004 (250) filtered.
    assert names == ["000003", "012314", "012314#0"]
    assert ds.num_filtered == 3  # two whole motions + the 10-frame sub-clip
    sub = next(e for e in ds.entries if e.name == "012314#0")
    real = np.load(SAMPLE / "new_joint_vecs" / "012314.npy")
    np.testing.assert_array_equal(sub.motion, real[20:80])
    whole = next(e for e in ds.entries if e.name == "012314")
    assert len(whole.captions) == 2


def test_item_crop_normalise_pad_mask(root):
    ds = make(root, train=False)
    i = [e.name for e in ds.entries].index("012314")
    item = ds[i]
    assert item["motion"].shape == (196, 263) and item["mask"].shape == (196,)
    assert item["length"] == 168 == int(item["mask"].sum())  # 170 cropped to a multiple of 4
    assert item["mask"][:168].all() and not item["mask"][168:].any()
    real = np.load(SAMPLE / "new_joint_vecs" / "012314.npy")
    mean, std = np.load(SAMPLE / "Mean.npy"), np.load(SAMPLE / "Std.npy")
    raw = ds.denormalize(item["motion"][:168]).numpy()
    starts = [s for s in range(3) if np.abs(real[s:s + 168] - raw).max() < 1e-4]
    assert len(starts) == 1  # a crop of 168 consecutive frames starting at 0, 1 or 2
    np.testing.assert_allclose(item["motion"][:168].numpy(), (real[starts[0]:starts[0] + 168] - mean) / std,
                               rtol=1e-5, atol=1e-5)
    assert (item["motion"][168:] == 0).all()
    assert item["text"] in ("a person walks forward.", "someone strolls ahead")


def test_eval_items_are_deterministic_per_seed_train_items_vary(root):
    ds = make(root, train=False)
    a, b = ds[0], ds[0]
    assert torch.equal(a["contact"], b["contact"]) and a["text"] == b["text"]
    other = make(root, train=False, seed=1)[0]
    assert not torch.equal(a["contact"], other["contact"])  # another seed, another draw
    torch.manual_seed(0)
    c = make(root)[0]
    torch.manual_seed(0)
    assert torch.equal(c["contact"], make(root)[0]["contact"])  # train draws follow torch's RNG
    train = make(root)
    i = [e.name for e in train.entries].index("012314")
    texts = {train[i]["text"] for _ in range(40)}
    assert len(texts) == 2  # both whole-clip captions are drawn


def test_train_crop_keeps_a_multiple_of_unit_length(root):
    ds = make(root, max_frames=100)
    for _ in range(10):
        item = ds[[e.name for e in ds.entries].index("012314")]
        assert item["length"] == 100 and item["mask"].sum() == 100


def test_contact_map_channels_match_the_formula():
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (40, 3)).astype(np.float32)
    dist = rng.uniform(0, 2, (40, 22)).astype(np.float32)
    out = contact_map(points, dist, JOINTS, sigma=0.8, num_points=25, rng=np.random.default_rng(3))
    assert out.shape == (25, 9)
    for row in out:
        k = int(np.argmin(np.abs(points - row[:3]).sum(1)))  # which scene point this row is
        np.testing.assert_allclose(row[:3], points[k])
        np.testing.assert_allclose(row[3:], np.exp(-0.5 * dist[k, JOINTS] ** 2 / 0.64), rtol=1e-5)
    assert len({tuple(r) for r in out}) == 25  # enough points: drawn without replacement
    more = contact_map(points, dist, JOINTS, 0.8, 100, np.random.default_rng(0))
    assert more.shape == (100, 9)  # too few points: drawn with replacement, still exactly num_points


def test_dataset_contacts_and_collate(root):
    ds = make(root, train=False, contact_num_points=64, contact_sigma=0.5)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["motion"].shape == (3, 196, 263) and batch["mask"].dtype == torch.bool
    assert batch["contact"].shape == (3, 64, 9)
    assert ((batch["contact"][..., 3:] > 0) & (batch["contact"][..., 3:] <= 1)).all()
    assert batch["length"].tolist() == [ds[i]["length"] for i in range(3)]
    assert isinstance(batch["text"], list) and isinstance(batch["tokens"][0], list)
    no_contacts = make(root, use_contacts=False)
    assert "contact" not in collate([no_contacts[0]])


# ---------------------------------------------------------------- bad input

def test_missing_root_points_to_the_demo(tmp_path):
    with pytest.raises(DataError, match="configs/demo.yaml"):
        make(tmp_path / "nowhere")


def test_the_reader_never_generates_the_synthetic_set(tmp_path):
    """Generating is the driver's preparation (cmdm.prepare), never a reader's (a worker's) job."""
    from cmdm.config import Config
    from cmdm.data.humanml3d import dataset_from_config
    cfg = Config()
    cfg.data.name, cfg.data.root = "synthetic", str(tmp_path / "synthetic")
    with pytest.raises(DataError, match="does not exist"):
        dataset_from_config(cfg.data, "train", train=True)
    assert list(tmp_path.iterdir()) == []


def test_split_naming_missing_motions_reports_count_and_ids(root):
    (root / "train.txt").write_text("012314\nghost1\nghost2\n")
    with pytest.raises(DataError) as err:
        make(root)
    msg = str(err.value)
    assert "train.txt" in msg and "2 motion(s)" in msg and "ghost1, ghost2" in msg


def test_missing_split_file(root):
    with pytest.raises(DataError, match="val.txt"):
        make(root, "val")


def test_missing_mean_std(root):
    (root / "Std.npy").unlink()
    with pytest.raises(DataError, match="Std.npy"):
        make(root)


def test_wrong_feature_shape_names_the_file(root):
    np.save(root / "new_joint_vecs" / "000003.npy", np.zeros((121, 22, 3), np.float32))
    with pytest.raises(DataError, match=r"000003\.npy.*\(T, 263\)"):
        make(root)


def test_corrupt_feature_file(root):
    (root / "new_joint_vecs" / "000003.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="000003.npy"):
        make(root)


def test_missing_caption_file(root):
    (root / "texts" / "000003.txt").unlink()
    with pytest.raises(DataError, match="000003.txt"):
        make(root)


def test_missing_contacts_fail_at_construction_unless_disabled(root):
    (root / "contacts" / "000003.npz").unlink()
    with pytest.raises(DataError, match=r"000003\.npz.*use_contacts=false"):
        make(root)
    assert len(make(root, use_contacts=False)) == 3


def test_malformed_contact_file(root, tmp_path):
    bad = root / "contacts" / "000003.npz"
    np.savez(bad, points=np.zeros((10, 3)))
    with pytest.raises(DataError, match="`points` and `dist`"):
        load_contact_file(bad)
    np.savez(bad, points=np.zeros((10, 3)), dist=np.zeros((9, 22)))
    with pytest.raises(DataError, match="same N"):
        load_contact_file(bad)


def test_nothing_passes_the_filter(root):
    with pytest.raises(DataError, match="length filter"):
        make(root, min_motion_len=180, max_motion_len=200)


# ---------------------------------------------------------------- clips read once, shared (a sweep's object store)

def _items(ds):
    return [ds[i] for i in range(len(ds))]


def test_shared_clips_through_ray_give_the_same_items_as_the_files(root):
    """A sweep reads a split once (read_clips) and its trials take it from Ray's object store: the dataset made
    from that copy (read-only arrays in shared memory) serves exactly what one reading the files serves."""
    import ray
    from cmdm.data.humanml3d import read_clips
    clips = read_clips(root, "train", progress=False)
    assert [c[0] for c in clips.clips] == ["012314", "012314#0", "000003"] and clips.num_filtered == 3
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        shared = ray.get(ray.put(clips))
    finally:
        ray.shutdown()
    assert not shared.motions["012314"].flags.writeable      # zero-copy, not a private copy
    files, from_store = make(root, train=False), make(root, train=False, clips=shared)
    assert [e.name for e in from_store.entries] == [e.name for e in files.entries]
    for a, b in zip(_items(files), _items(from_store)):
        assert a["id"] == b["id"] and a["text"] == b["text"] and a["length"] == b["length"]
        assert torch.equal(a["motion"], b["motion"]) and torch.equal(a["contact"], b["contact"])
    assert from_store.num_filtered == files.num_filtered


def test_shared_clips_of_other_filters_or_split_are_not_used(root):
    """A trial whose data.* settings differ from the sweep's (here the length filter) reads its own files."""
    from cmdm.data.humanml3d import read_clips
    clips = read_clips(root, "train", progress=False)
    longer = make(root, max_motion_len=300, clips=clips)         # keeps the 250-frame motion the copy filtered out
    assert "000004" in [e.name for e in longer.entries]
    test = make(root, "test", clips=clips)                       # another split: its own file list
    assert {e.motion_id for e in test.entries} == {"012314", "000003"}


def test_a_sweep_shares_its_clips_only_when_they_fit_the_object_store(root, monkeypatch):
    """share_dataset puts the base config's splits in the object store, unless their motions exceed a quarter of
    the smallest node's store: then it puts nothing and every trial reads its files."""
    from types import SimpleNamespace

    import ray
    from cmdm.config import load_config
    from cmdm.tuning import run
    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "demo.yaml"), [f"data.root={root}"])
    sweep = SimpleNamespace(base_config=cfg)
    put = []
    monkeypatch.setattr(ray, "put", lambda obj: put.append(obj) or "ref")
    lines = []
    for store, shared in ((10**9, ["ref"]), (10**4, None)):      # the motions here are ~0.4 MB
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"object_store_memory": store}},
                                                   {"Alive": False, "Resources": {}}])
        assert run.share_dataset(sweep, log=lines.append) == shared
    assert len(put) == 1 and set(put[0]) == {"train", "test"} and put[0]["test"].split == "test"
    assert "shared with every trial" in lines[0] and "each trial reads its own files" in lines[1]


def test_the_sweep_driver_reads_each_split_once(root, monkeypatch):
    """prepare_data keeps the test split it read to check its size, and share_dataset puts that same copy in the
    object store (reading only the split not yet read), instead of reading the files again."""
    from types import SimpleNamespace

    import ray
    from cmdm import prepare
    from cmdm.config import load_config
    from cmdm.tuning import run
    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
                      [f"data.root={root}", "data.name=humanml3d", "evaluation.batch_size=1"])
    read = {}
    prepare.prepare_data(cfg, read)
    assert set(read) == {"test"} and read["test"].split == "test"
    put = []
    monkeypatch.setattr(ray, "put", lambda obj: put.append(obj) or "ref")
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"object_store_memory": 10**9}}])
    assert run.share_dataset(SimpleNamespace(base_config=cfg), read, log=lambda line: None) == ["ref"]
    assert put[0]["test"] is read["test"] and put[0]["train"].split == "train"
