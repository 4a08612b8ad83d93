"""Reader for the HumanML3D directory layout, plus afford-motion's contact maps.

One code path serves the real HumanML3D download and the embedded synthetic set
(`cmdm.data.synthetic` writes the same layout):

    <root>/new_joint_vecs/<id>.npy   float32 (T, 263) features, 20 fps
    <root>/texts/<id>.txt            lines `caption#word/POS ...#from#to` (seconds; 0#0 = whole clip)
    <root>/Mean.npy, <root>/Std.npy  (263,) normalisation of the generator's input
    <root>/{train,val,test}.txt      one id per line
    <root>/contacts/<id>.npz         optional: `points` (N, 3+) and `dist` (N, 22)

Every malformed or missing file raises `DataError` with one paragraph naming the
file, what was expected, and the fix. What is checked where (so a bad file stops a run before
training, not mid-epoch inside a Ray worker):

  - opening a `MotionDataset`: Mean/Std (readable arrays of shape (263,), finite, Std > 0), the split
    file (ids, no duplicate), every motion of the split (a numeric (T, 263) array, finite: each is
    loaded anyway), every caption file (UTF-8, well-formed lines) and, with contacts, every
    contact file's archive and headers (keys `points`/`dist`, shapes (N,3+)/(N,22), N > 0; cheap:
    the arrays themselves are read lazily, at first use);
  - `check_dataset` (the driver's preparation, `cmdm.prepare.prepare`, runs it once before Ray starts):
    all of the above for the train, val (if present) and test splits, plus every contact file read
    whole and checked finite. It keeps nothing in memory. Measured on the 2,000-clip synthetic set
    (1,024 points a clip, 2 busy CPU cores): 1.7 s (0.8 s without contacts); the contact header
    check at open adds ~0.3 ms a clip.
"""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

FPS = 20
FEATURE_DIM = 263
NUM_JOINTS = 22
DOWNLOAD_HINT = (
    "Get HumanML3D from https://github.com/EricGuo5513/HumanML3D (follow its README to build "
    "new_joint_vecs/ and texts/), or run on the embedded synthetic dataset with configs/demo.yaml."
)


class DataError(Exception):
    """A dataset file is missing or malformed; the message says which file and how to fix it."""


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Caption:
    text: str            # the raw sentence
    tokens: tuple        # ('a/DET', 'man/NOUN', ...) as HumanML3D writes them
    start: float         # seconds; 0 and 0 mean the whole clip
    end: float

    @property
    def whole_clip(self) -> bool:
        return self.start == 0.0 and self.end == 0.0


def parse_caption_line(line: str, path: str | Path, lineno: int) -> Caption:
    """Parse `caption#word/POS word/POS ...#from#to`; NaN times (seen in HumanML3D) mean whole clip."""
    parts = line.rstrip("\n").split("#")
    if len(parts) != 4:
        raise DataError(
            f"{path}, line {lineno}: expected 4 '#'-separated fields `caption#word/POS ...#from#to`, "
            f"found {len(parts)} in {line.strip()!r}. Fix or remove that line."
        )
    text, tokens, start, end = parts
    try:
        start_s, end_s = float(start), float(end)
    except ValueError:
        raise DataError(
            f"{path}, line {lineno}: the from/to fields must be seconds (numbers), got {start!r} and {end!r}."
        ) from None
    start_s = 0.0 if np.isnan(start_s) else start_s
    end_s = 0.0 if np.isnan(end_s) else end_s
    token_list = tuple(tokens.split())
    bad = [tok for tok in token_list if "/" not in tok]
    if bad:
        raise DataError(
            f"{path}, line {lineno}: tokens must be written `word/POS`, found {bad[0]!r}. "
            "Re-tag the caption (HumanML3D uses spaCy lemmas and UPOS tags)."
        )
    return Caption(text.strip(), token_list, start_s, end_s)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                        "re-save it as UTF-8 (or restore it from the dataset).") from None
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read ({err.strerror or err}); check its permissions "
                        "or restore it from the dataset.") from None


def read_captions(path: str | Path) -> list[Caption]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Caption file {path} is missing: every motion needs texts/<id>.txt. {DOWNLOAD_HINT}")
    lines = _read_text(path, "Caption file").splitlines()
    captions = [parse_caption_line(line, path, i + 1) for i, line in enumerate(lines) if line.strip()]
    if not captions:
        raise DataError(f"Caption file {path} holds no caption line; expected `caption#word/POS ...#from#to`.")
    return captions


# ----------------------------------------------------------------------------
# Files: splits, features, normalisation, contacts
# ----------------------------------------------------------------------------

def read_split(root: str | Path, split: str) -> list[str]:
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"Split file {path} is missing: expected one motion id per line. {DOWNLOAD_HINT}")
    ids = [line.strip() for line in _read_text(path, "Split file").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"Split file {path} is empty: expected one motion id per line.")
    seen, repeated = set(), []
    for i in ids:
        if i in seen and i not in repeated:
            repeated.append(i)
        seen.add(i)
    if repeated:
        raise DataError(f"Split file {path} lists {len(repeated)} id(s) more than once (first: "
                        f"{', '.join(repeated[:5])}); a repeated clip would be trained or evaluated twice. "
                        "Keep each id on one line only.")
    return ids


def _load_array(path: Path, what: str, fix: str) -> np.ndarray:
    """np.load without pickles; anything that is not one numeric array is a DataError naming the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = "not a .npy file, or one holding Python objects" if "pickle" in str(err) else str(err)
        raise DataError(f"{what} {path} cannot be read as a .npy array ({reason}); {fix}.") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise DataError(f"{what} {path} is an .npz archive, not one .npy array; {fix}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{what} {path} holds {arr.dtype} values, not numbers; {fix}.")
    return arr


def load_features(path: str | Path) -> np.ndarray:
    path = Path(path)
    motion = _load_array(path, "Motion file", "re-extract it")
    if motion.ndim != 2 or motion.shape[1] != FEATURE_DIM:
        raise DataError(
            f"Motion file {path} has shape {motion.shape}; expected (T, {FEATURE_DIM}) HumanML3D features "
            "(new_joint_vecs/, not new_joints/)."
        )
    if not np.isfinite(motion).all():
        raise DataError(f"Motion file {path} contains NaN or inf values; re-extract it.")
    return motion.astype(np.float32)


def load_mean_std(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name in ("Mean.npy", "Std.npy"):
        path = Path(root) / name
        if not path.is_file():
            raise DataError(f"{path} is missing: HumanML3D ships Mean.npy and Std.npy (263,) at its root. {DOWNLOAD_HINT}")
        arr = _load_array(path, "Normalisation file", f"restore it or recompute it ({FEATURE_DIM},) "
                                                         "from the training motions")
        if arr.shape != (FEATURE_DIM,):
            raise DataError(f"{path} has shape {arr.shape}; expected ({FEATURE_DIM},).")
        if not np.isfinite(arr).all():
            raise DataError(f"{path} contains NaN or inf values; recompute it from the training motions "
                            "(for the synthetic set: regenerate it).")
        arrays.append(arr.astype(np.float32))
    mean, std = arrays
    if (std <= 0).any():
        raise DataError(f"{Path(root) / 'Std.npy'} has zero or negative entries; recompute it.")
    return mean, std


def _contact_arrays(path: Path, headers_only: bool):
    """The `points` and `dist` of a contact file: arrays, or (shape, dtype) from the .npy headers only."""
    if not path.is_file():
        raise DataError(
            f"Contact file {path} is missing: with data.use_contacts=true every motion needs contacts/<id>.npz "
            "holding `points` (N,3+) and `dist` (N,22). Set data.use_contacts=false to train on text only."
        )
    out = []
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if "points" not in names or "dist" not in names:
                raise DataError(f"Contact file {path} holds keys {sorted(names)}; expected `points` and `dist`.")
            for key in ("points", "dist"):
                with zf.open(key + ".npy") as f:
                    version = np.lib.format.read_magic(f) if headers_only else None
                    if version in ((1, 0), (2, 0)):
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read_header(f)
                        out.append((shape, dtype))
                    else:   # the whole array (also for a rare format 3.0 header: read from the start)
                        with zf.open(key + ".npy") as whole:
                            arr = np.lib.format.read_array(whole, allow_pickle=False)
                        out.append((arr.shape, arr.dtype, arr))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise DataError(f"Contact file {path} cannot be read as an .npz archive ({err}); regenerate it.") from None
    (p_shape, p_dtype, *p), (d_shape, d_dtype, *d) = out
    if len(p_shape) != 2 or p_shape[1] < 3 or d_shape != (p_shape[0], NUM_JOINTS):
        raise DataError(
            f"Contact file {path}: `points` has shape {p_shape} and `dist` {d_shape}; expected (N,3+) "
            f"and (N,{NUM_JOINTS}) with the same N."
        )
    if p_shape[0] == 0:
        raise DataError(f"Contact file {path} holds no point (N = 0); a scene needs at least one point: "
                        "regenerate it.")
    if not all(np.issubdtype(t, np.floating) or np.issubdtype(t, np.integer) for t in (p_dtype, d_dtype)):
        raise DataError(f"Contact file {path} holds {p_dtype} / {d_dtype} arrays, not numbers; regenerate it.")
    return (p[0], d[0]) if not headers_only else None


def check_contact_file(path: str | Path) -> None:
    """The cheap check of a contact file (archive, keys, shapes and N > 0 from the headers; no data read)."""
    _contact_arrays(Path(path), headers_only=True)


def load_contact_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (points (N,3), dist (N,22)) from an afford-motion style `contacts/<id>.npz`."""
    path = Path(path)
    points, dist = _contact_arrays(path, headers_only=False)
    if not (np.isfinite(points).all() and np.isfinite(dist).all()):
        raise DataError(f"Contact file {path} contains NaN or inf values; regenerate it.")
    return points[:, :3].astype(np.float32), dist.astype(np.float32)


def contact_map(points: np.ndarray, dist: np.ndarray, joints: list[int], sigma: float,
                num_points: int, rng: np.random.Generator) -> np.ndarray:
    """afford-motion's contact input: xyz + exp(-0.5 d^2 / sigma^2) per chosen joint, resampled to num_points.

    Points are drawn without replacement when the scene has enough, with replacement otherwise,
    so every sample has exactly `num_points` rows.
    """
    n = points.shape[0]
    idx = rng.choice(n, num_points, replace=n < num_points)
    channels = np.exp(-0.5 * dist[idx][:, joints] ** 2 / sigma**2)
    return np.concatenate([points[idx], channels], axis=1).astype(np.float32)


def _check_motions_exist(root: Path, split: str, ids: list[str]) -> None:
    missing = [i for i in ids if not (root / "new_joint_vecs" / f"{i}.npy").is_file()]
    if missing:
        raise DataError(
            f"{root / (split + '.txt')} names {len(missing)} motion(s) with no file in "
            f"{root / 'new_joint_vecs'} (first: {', '.join(missing[:5])}). The download is incomplete "
            "or the split belongs to another dataset; rebuild new_joint_vecs/ or remove those ids."
        )


def check_dataset(root, splits=("train", "val", "test"), use_contacts: bool = True, progress: bool = False) -> int:
    """Read every file a run will read and refuse (DataError, naming the file) the first bad one.

    Checks Mean/Std, the split files (val only if val.txt exists), and for each listed clip its motion
    (shape, finite), captions (UTF-8, format) and, with use_contacts, its contact file read whole (shape,
    N > 0, finite). One pass that keeps nothing in memory: run once in the driver before any worker
    starts, so a bad file is an `error:` and exit 2 rather than a Ray worker's crash. Returns the
    number of clips checked."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist. {DOWNLOAD_HINT}")
    load_mean_std(root)
    ids = {}
    for split in splits:
        if split == "val" and not (root / "val.txt").is_file():
            continue
        split_ids = read_split(root, split)
        _check_motions_exist(root, split, split_ids)
        ids.update(dict.fromkeys(split_ids))
    def check_clip(motion_id):
        load_features(root / "new_joint_vecs" / f"{motion_id}.npy")
        read_captions(root / "texts" / f"{motion_id}.txt")
        if use_contacts:
            load_contact_file(root / "contacts" / f"{motion_id}.npz")

    # Threads: reading and np.isfinite release the GIL; map() raises the first bad clip in split order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in tqdm(pool.map(check_clip, ids), total=len(ids), desc="checking data", disable=not progress,
                      leave=False):
            pass
    return len(ids)


# ----------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------

@dataclass
class Entry:
    """One training item: a (sub-)clip of a motion with the captions that describe it."""
    name: str                 # motion id, with a suffix for sub-clips
    motion_id: str            # file id (contacts are per file)
    motion: np.ndarray        # (T, 263) raw features
    captions: list


@dataclass
class SplitClips:
    """A split's (sub-)clips as read from its files, before any per-item draw: what MotionDataset serves.

    Each file's motion is held once and a sub-clip is (motion id, first frame, end frame), so the whole split
    pickles in one piece without copies. A sweep reads it once in its driver and shares it with every trial
    through Ray's object store (cmdm.tuning.run), instead of each trial re-reading thousands of files.
    """
    root: str
    split: str
    filters: tuple            # (min_motion_len, max_motion_len, use_contacts): what decides the clips
    mean: np.ndarray
    std: np.ndarray
    motions: dict             # motion id -> (T, 263) raw features of the whole file
    clips: list               # (name, motion id, first frame, end frame, captions)
    num_filtered: int         # (sub-)clips dropped by the length filter

    def serves(self, root, split: str, filters: tuple) -> bool:
        return (str(Path(root).resolve()), split, tuple(filters)) == (self.root, self.split, self.filters)

    def entries(self) -> list[Entry]:
        return [Entry(name, mid, self.motions[mid][a:b], caps) for name, mid, a, b, caps in self.clips]


def read_clips(root, split: str, *, min_motion_len=40, max_motion_len=200, use_contacts=True,
               progress=True) -> SplitClips:
    """Read a split's files into its (sub-)clips: the length filter and sub-clips of HumanML3D's loader, and with
    use_contacts a check of each clip's contact file (so a bad one fails now, not mid-epoch)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist. {DOWNLOAD_HINT}")
    mean, std = load_mean_std(root)
    ids = read_split(root, split)
    _check_motions_exist(root, split, ids)
    motions, clips, num_filtered = {}, [], 0
    for motion_id in tqdm(ids, desc=f"loading {split}", disable=not progress, leave=False):
        motion = load_features(root / "new_joint_vecs" / f"{motion_id}.npy")
        captions = read_captions(root / "texts" / f"{motion_id}.txt")
        # As HumanML3D's loader: the whole motion must pass the length filter before any of its
        # sub-clips is considered (this fixes the test-set composition the published numbers use).
        if len(motion) < min_motion_len or len(motion) >= max_motion_len:
            num_filtered += 1
            continue
        kept = False
        whole = [c for c in captions if c.whole_clip]
        if whole:
            clips.append((motion_id, motion_id, 0, len(motion), whole))
            kept = True
        for k, cap in enumerate(c for c in captions if not c.whole_clip):
            a, b = int(cap.start * FPS), int(cap.end * FPS)
            if min_motion_len <= len(motion[a:b]) < max_motion_len:
                clips.append((f"{motion_id}#{k}", motion_id, a, b, [cap]))
                kept = True
            else:
                num_filtered += 1
        if kept:
            motions[motion_id] = motion
        if use_contacts:  # fail now, not mid-epoch, on a missing or malformed contact file
            check_contact_file(root / "contacts" / f"{motion_id}.npz")
    if not clips:
        raise DataError(
            f"No motion of {root / (split + '.txt')} passes the length filter "
            f"{min_motion_len} <= T < {max_motion_len} ({num_filtered} filtered out). "
            "Check data.min_motion_len / data.max_motion_len."
        )
    return SplitClips(str(root.resolve()), split, (min_motion_len, max_motion_len, use_contacts), mean, std,
                      motions, clips, num_filtered)


class MotionDataset(Dataset):
    """HumanML3D-layout dataset: length filter, sub-clips, crop to unit length, normalise, pad, mask, contacts.

    Each item draws a caption, a crop offset and contact points at random, as HumanML3D's loader does.
    `train=True` seeds that draw from torch's RNG (so a DataLoader worker's seed, and a resumed run's
    restored RNG, fix it); `train=False` seeds it from (seed, index), so an evaluation is repeatable and
    another `seed` gives another draw of the same test set (the GT row and replications rely on it).
    `clips`: the split already read (read_clips, e.g. shared by a sweep), used when it was read from the same
    folder and split with the same filters; otherwise the files are read.
    """

    def __init__(self, root, split: str, *, min_motion_len=40, max_motion_len=200, max_frames=196,
                 unit_length=4, use_contacts=True, contact_num_points=8192, contact_sigma=0.8,
                 contact_joints=(0, 10, 11, 12, 20, 21), train=True, seed=0, progress=True,
                 clips: SplitClips | None = None):
        self.root = Path(root)
        self.split, self.train, self.seed = split, train, seed
        self.max_frames, self.unit_length = max_frames, unit_length
        self.use_contacts = use_contacts
        self.contact_num_points, self.contact_sigma = contact_num_points, contact_sigma
        self.contact_joints = list(contact_joints)
        filters = (min_motion_len, max_motion_len, use_contacts)
        self.read_files = clips is None or not clips.serves(root, split, filters)   # False: served from `clips`
        if self.read_files:
            clips = read_clips(root, split, min_motion_len=min_motion_len, max_motion_len=max_motion_len,
                               use_contacts=use_contacts, progress=progress)
        self.mean, self.std = clips.mean, clips.std
        self.entries: list[Entry] = clips.entries()
        self.num_filtered = clips.num_filtered  # (sub-)clips dropped by the length filter
        self._contacts: dict = {}

    def __len__(self):
        return len(self.entries)

    def _contact(self, motion_id, rng):
        if motion_id not in self._contacts:  # small (N x 25 floats): keep each file after its first read
            self._contacts[motion_id] = load_contact_file(self.root / "contacts" / f"{motion_id}.npz")
        points, dist = self._contacts[motion_id]
        return contact_map(points, dist, self.contact_joints, self.contact_sigma, self.contact_num_points, rng)

    def __getitem__(self, index):
        seed = int(torch.randint(2**62, ())) if self.train else (self.seed, index)
        rng = np.random.default_rng(seed)
        entry = self.entries[index]
        caption = entry.captions[rng.integers(len(entry.captions))]

        length = min(len(entry.motion), self.max_frames) // self.unit_length * self.unit_length
        start = rng.integers(0, len(entry.motion) - length + 1)
        motion = (entry.motion[start:start + length] - self.mean) / self.std

        padded = np.zeros((self.max_frames, FEATURE_DIM), dtype=np.float32)
        padded[:length] = motion
        mask = np.zeros(self.max_frames, dtype=bool)
        mask[:length] = True
        item = {
            "motion": torch.from_numpy(padded),
            "mask": torch.from_numpy(mask),
            "length": length,
            "text": caption.text,
            "tokens": list(caption.tokens),
            "id": entry.name,
        }
        if self.use_contacts:
            item["contact"] = torch.from_numpy(self._contact(entry.motion_id, rng))
        return item

    def denormalize(self, motion):
        """Normalised features -> raw HumanML3D features (numpy or torch, any leading dims)."""
        if isinstance(motion, torch.Tensor):
            return motion * torch.as_tensor(self.std, device=motion.device) + torch.as_tensor(self.mean, device=motion.device)
        return motion * self.std + self.mean


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings and token lists as lists."""
    batch = {"length": torch.tensor([it["length"] for it in items], dtype=torch.long)}
    for key in ("motion", "mask", "contact"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    for key in ("text", "tokens", "id"):
        batch[key] = [it[key] for it in items]
    return batch


def clips_from_config(data_cfg, split: str, progress: bool = True) -> SplitClips:
    """read_clips of the dataset a config names (what dataset_from_config(..., clips=) accepts)."""
    return read_clips(data_cfg.root, split, min_motion_len=data_cfg.min_motion_len,
                      max_motion_len=data_cfg.max_motion_len, use_contacts=data_cfg.use_contacts, progress=progress)


def dataset_from_config(data_cfg, split: str, train: bool, seed: int = 0, progress: bool = True,
                        clips: SplitClips | None = None) -> MotionDataset:
    """Open the dataset a config names. It only reads: the embedded synthetic set is generated by the driver's
    preparation (`cmdm.prepare.prepare`) before any reader opens it, and a missing folder is a DataError.
    `clips`: that split already read (a sweep's shared copy), used if it matches the config."""
    return MotionDataset(
        data_cfg.root, split,
        min_motion_len=data_cfg.min_motion_len, max_motion_len=data_cfg.max_motion_len,
        max_frames=data_cfg.max_frames, unit_length=data_cfg.unit_length,
        use_contacts=data_cfg.use_contacts, contact_num_points=data_cfg.contact_num_points,
        contact_sigma=data_cfg.contact_sigma, contact_joints=data_cfg.contact_joints,
        train=train, seed=seed, progress=progress, clips=clips,
    )
