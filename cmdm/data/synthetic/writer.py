"""The dataset writer: clips from a process pool, the splits, Mean/Std and meta.json, and the manifest that
proves a folder is the generator's own (the only kind it ever replaces)."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmdm import skeleton as sk
from cmdm.data.humanml3d import DataError
from cmdm.data.synthetic.captions import FAMILIES
from cmdm.data.synthetic.channels import FPS
from cmdm.data.synthetic.clips import clip_rng, generate_clip

GENERATOR_VERSION = "1.0"


def _save_npz(path, **arrays):
    """np.savez with fixed zip timestamps, so equal arrays give byte-identical files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def _write_clip(index, root, seed, num_points):
    """Worker: make one clip, write its four files, return what the dataset summary needs."""
    clip = generate_clip(clip_rng(seed, index), index, num_points)
    cid = clip["id"]
    np.save(root / "new_joint_vecs" / f"{cid}.npy", clip["features"])
    np.save(root / "new_joints" / f"{cid}.npy", clip["joints"])
    (root / "texts" / f"{cid}.txt").write_text("\n".join(clip["text_lines"]) + "\n")
    _save_npz(root / "contacts" / f"{cid}.npz", points=clip["points"], dist=clip["dist"])
    f = clip["features"].astype(np.float64)
    mean = f.mean(0)
    return dict(index=index, families=clip["families"], frames=len(f), mean=mean,
                m2=((f - mean) ** 2).sum(0))


def _pooled_mean_std(stats):
    """Mean and std over all rows of several clips from per-clip (count, mean, M2), in order."""
    n, mean, m2 = 0, np.zeros(sk.FEATURE_DIM), np.zeros(sk.FEATURE_DIM)
    for s in stats:
        k = s["frames"]
        delta = s["mean"] - mean
        mean = mean + delta * k / (n + k)
        m2 = m2 + s["m2"] + delta ** 2 * n * k / (n + k)
        n += k
    return mean, np.sqrt(m2 / n)


def humanml3d_std(std):
    """HumanML3D's cal_mean_variance: every feature group gets the mean std of its group
    (root rot vel, root lin vel, root y, ric, rot 6D, local velocity, foot contacts), so a
    group is normalised as a whole and no single dim is blown up."""
    std = np.array(std, np.float64)
    for g in (sk.ROOT_ROT_VEL, sk.ROOT_LIN_VEL, sk.ROOT_Y, sk.RIC, sk.ROT6D, sk.LOCAL_VEL,
              sk.FOOT_CONTACT):
        std[g] = std[g].mean()
    return std


def split_ids(num_clips, seed):
    """~80/5/15 train/val/test split of the clip ids, shuffled by the seed."""
    order = np.random.default_rng(int(seed)).permutation(num_clips)
    n_test = max(1, int(round(0.15 * num_clips))) if num_clips >= 3 else 0
    n_val = max(1, int(round(0.05 * num_clips))) if num_clips >= 3 else 0
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {name: sorted(int(i) for i in idx) for name, idx in
            (("train", train), ("val", val), ("test", test))}


# ----------------------------------------------------------------------------- ownership
# The generator replaces only a folder it wrote itself and can prove unchanged. Its proof is
# MANIFEST (written last, inside the folder): the generator's fingerprint, the settings, and the
# size and sha256 of every file it wrote. A folder is replaced when it holds that manifest, nothing
# but the files listed in it (plus the derived preview/*.gif and text_features/*.pt that this
# project writes into a dataset), and none of them changed. Anything else is refused: the
# generator never deletes or overwrites a file it cannot prove it wrote.

MANIFEST = "synthetic_manifest.json"
FINGERPRINT = hashlib.sha256(f"cmdm.data.synthetic {GENERATOR_VERSION}".encode()).hexdigest()[:16]
_LAYOUT = re.compile(r"(new_joint_vecs|new_joints)/\d{6}\.npy|texts/\d{6}\.txt|contacts/\d{6}\.npz|"
                     r"(train|val|test|all)\.txt|Mean\.npy|Std\.npy|meta\.json|"
                     + re.escape(MANIFEST) + r"(\.part)?")
# written into a dataset by others: preview GIFs (main --preview), cached caption features (cmdm.prepare,
# with the temp files of cmdm.atomic that a killed write can leave)
_DERIVED = re.compile(r"preview/[^/]+\.gif|text_features/([^/]+\.pt|\.[^/]+\.pt\.[^/]+\.tmp)")
_SUBDIRS = ("new_joint_vecs", "new_joints", "texts", "contacts", "preview", "text_features")
_ANSWER = ("Choose another folder (data.root=... for train_ray.py / tune_ray.py, --out for "
           "cmdm.data.synthetic)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if this generator wrote it (its fingerprint), else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != "cmdm.data.synthetic" or \
            manifest.get("fingerprint") != FINGERPRINT or not isinstance(manifest.get("files", {}), dict):
        return None
    return manifest


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(files, other entries: links, sockets, unexpected folders) under folder, as sorted relative paths."""
    files, other = [], []

    def walk(path, prefix):
        with os.scandir(path) as it:
            for e in sorted(it, key=lambda e: e.name):
                rel = prefix + e.name
                if e.is_symlink():
                    other.append(rel)
                elif e.is_dir():
                    if rel in _SUBDIRS:
                        walk(e.path, rel + "/")
                    else:
                        other.append(rel + "/")
                elif e.is_file():
                    files.append(rel)
                else:
                    other.append(rel)
    walk(folder, "")
    return files, other


def _write_manifest(folder: Path, manifest: dict) -> None:
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(part, folder / MANIFEST)


def dataset_problems(folder, check_contents: bool = True) -> dict:
    """What keeps `folder` from being a finished, intact dataset of this generator.

    Returns {"foreign": [...], "changed": [...], "missing": [...], "manifest": dict | None}:
    foreign = entries it did not write (everything, when there is no manifest of ours), changed =
    files whose size or sha256 differs from the manifest, missing = listed files that are gone."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    files, other = _entries(folder)
    if manifest is None or not manifest.get("complete"):
        return dict(foreign=other + files, changed=[], missing=[], manifest=None, stats=())
    listed = manifest["files"]
    foreign = other + [f for f in files if f not in listed and f != MANIFEST and not _DERIVED.fullmatch(f)]
    present = set(files)
    missing = [f for f in listed if f not in present]
    changed, stats = [], []
    for rel, (size, digest) in sorted(listed.items()):
        if rel in present:
            st = (folder / rel).stat()
            stats.append((rel, st.st_size, st.st_mtime_ns))
            if st.st_size != size or (check_contents and _sha256(folder / rel) != digest):
                changed.append(rel)
    return dict(foreign=foreign, changed=changed, missing=missing, manifest=manifest, stats=tuple(stats))


def _first(names, k=4) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _refuse_unless_replaceable(out: Path) -> None:
    """Raise DataError unless out is absent, an empty folder, or an intact dataset of ours."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; the synthetic generator writes a dataset folder "
                        f"there and never replaces a file. {_ANSWER}.")
    found = dataset_problems(out)
    if found["foreign"]:
        why = "holds files that cmdm.data.synthetic did not write" if found["manifest"] else \
            f"holds files and no {MANIFEST} of cmdm.data.synthetic {GENERATOR_VERSION} (it is not a " \
            "dataset this generator wrote, or one written before synthetic sets carried a manifest)"
        raise DataError(f"{out} {why} ({_first(found['foreign'])}); the generator never deletes or "
                        f"overwrites files it cannot prove it wrote. {_ANSWER}, or move those files away "
                        "yourself; to train on a dataset of your own there, set data.name=humanml3d.")
    if found["changed"]:
        raise DataError(f"{out} is a synthetic dataset whose files were changed after generation "
                        f"({_first(found['changed'])}); the generator will not overwrite those changes. "
                        f"{_ANSWER}, or delete {out} yourself to regenerate it.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_ours(folder: Path) -> None:
    """Delete a folder of ours file by file (the manifest last), then its now empty folders; a file that is
    not ours makes rmdir fail rather than disappear."""
    files, _ = _entries(folder)
    for rel in sorted(files, key=lambda r: (r.startswith(MANIFEST), r)):
        (folder / rel).unlink()
    for sub in _SUBDIRS:
        if (folder / sub).is_dir():
            (folder / sub).rmdir()
    folder.rmdir()


def _clean_stale_temps(out: Path, log, locked: bool = True) -> None:
    """Remove `<out>.tmp-<pid>` folders left by a killed generator: pid dead (or ours, when we hold the
    lock), holding our (incomplete) manifest and only files of our layout, or nothing at all."""
    for tmp in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not tmp.is_dir() or tmp.is_symlink() or \
                (int(pid) == os.getpid() and not locked) or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            files, other = _entries(tmp)
            ours = _read_manifest(tmp) is not None and all(_LAYOUT.fullmatch(f) for f in files)
            if other or (files and not ours):
                log(f"[synthetic] leaving {tmp} alone: it holds files this generator did not write")
                continue
            _remove_ours(tmp)
            log(f"[synthetic] removed {tmp}, left by a generator that was killed (pid {pid})")
        except OSError as err:   # e.g. a worker of the dead generator still writing: try next time
            log(f"[synthetic] could not remove {tmp} yet ({err})")


@contextlib.contextmanager
def generator_lock(out: Path, log=None):
    """An exclusive lock on `.<out>.lock` beside out, so two generators on one folder take turns.

    The lock file is removed on release; a waiter that then holds the lock on the removed file sees
    that the path no longer names it and locks the new one (so two never hold it at once)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                log(f"[synthetic] waiting for another generator writing {out} (it holds {path})")
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            if os.fstat(fd).st_size == 0:      # ours (we never write in it); never remove a user's file
                os.unlink(path)
        finally:
            os.close(fd)


def _settings(num_clips, seed, num_points) -> dict:
    return dict(num_clips=int(num_clips), seed=int(seed), num_points=int(num_points), version=GENERATOR_VERSION)


def generate_dataset(out_dir, num_clips=2000, seed=0, num_points=1024, workers=None,
                     progress=True, log=None) -> Path:
    """Write the whole dataset to out_dir (replacing an earlier one of ours) and return its path.

    Refuses (DataError) a folder holding anything it did not write. Clips are made in a process
    pool (each from its own (seed, index) stream, so the files do not depend on the number of
    workers) into `<out>.tmp-<pid>`, renamed to `out` at the end with the manifest written last: an
    interrupted run never looks finished, and the next run removes the temp folder a killed one
    left. Two generators on one folder take turns (a file lock)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if int(num_clips) < 1:
        raise DataError(f"the number of clips must be at least 1 (got {num_clips}); e.g. --num 2000 "
                        "(data.synthetic_num_clips).")
    out = Path(out_dir).resolve()
    _refuse_unless_replaceable(out)         # before the lock: a refusal writes nothing
    with generator_lock(out, log):
        _clean_stale_temps(out, log)
        return _generate(out, num_clips, seed, num_points, workers, progress)


def _generate(out: Path, num_clips, seed, num_points, workers, progress) -> Path:
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    _write_manifest(tmp, dict(generator="cmdm.data.synthetic", fingerprint=FINGERPRINT, complete=False,
                              pid=os.getpid()))
    for sub in ("new_joint_vecs", "new_joints", "texts", "contacts"):
        (tmp / sub).mkdir()
    try:
        work = partial(_write_clip, root=tmp, seed=seed, num_points=num_points)
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=num_clips, disable=not progress, desc="synthetic clips", unit="clip")
        if workers == 1 or num_clips < 2:
            stats = []
            for i in range(num_clips):
                stats.append(work(i))
                bar.update()
        else:
            with multiprocessing.Pool(min(workers, num_clips)) as pool:
                stats = []
                for s in pool.imap(work, range(num_clips), chunksize=4):
                    stats.append(s)
                    bar.update()
        bar.close()

        splits = split_ids(num_clips, seed)
        for name, idx in splits.items():
            (tmp / f"{name}.txt").write_text("".join(f"{i:06d}\n" for i in idx))
        (tmp / "all.txt").write_text("".join(f"{i:06d}\n" for i in range(num_clips)))
        train = splits["train"] or list(range(num_clips))
        mean, std = _pooled_mean_std([stats[i] for i in train])
        np.save(tmp / "Mean.npy", mean.astype(np.float32))
        np.save(tmp / "Std.npy", humanml3d_std(std).astype(np.float32))

        counts = {f: 0 for f in FAMILIES}
        for s in stats:
            for f in s["families"]:
                counts[f] += 1
        frames = [s["frames"] for s in stats]
        meta = dict(generator="cmdm.data.synthetic", version=GENERATOR_VERSION, seed=int(seed),
                    num_clips=int(num_clips), num_points=int(num_points), fps=FPS,
                    feature_dim=sk.FEATURE_DIM, num_joints=sk.NUM_JOINTS,
                    splits={k: len(v) for k, v in splits.items()}, actions_per_family=counts,
                    frames=dict(min=min(frames), max=max(frames),
                                mean=round(float(np.mean(frames)), 2)),
                    licence="generated: procedurally synthesised by cmdm.data.synthetic, "
                            "no recorded motion or third-party data; same licence as this code")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        files, _ = _entries(tmp)
        listed = {rel: [(tmp / rel).stat().st_size, _sha256(tmp / rel)] for rel in files if rel != MANIFEST}
        _write_manifest(tmp, dict(generator="cmdm.data.synthetic", fingerprint=FINGERPRINT, complete=True,
                                  settings=_settings(num_clips, seed, num_points), files=listed))
        _refuse_unless_replaceable(out)     # again, under the lock: it may have changed meanwhile
        if out.exists():
            _remove_ours(out)
        tmp.rename(out)
    except BaseException:
        if tmp.exists():
            _remove_ours(tmp)
        raise
    return out


_VERIFIED: dict = {}   # folder -> (name, size, mtime_ns) of its files when this process last hashed them all


def ensure_dataset(out_dir, num_clips=2000, seed=0, num_points=1024, workers=None,
                   progress=True, log=None) -> Path:
    """Generate the dataset unless out_dir already holds a finished one with these settings, intact.

    Reuse is decided from the manifest, with every file's size and sha256 checked (a removed file
    means regenerate, a changed one or a foreign one means refuse): 1-2 s on the 2,000-clip set, once
    per process; a later call in the same process re-hashes only if a file's size or mtime moved."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir).resolve()

    def ready() -> bool:
        if not out.is_dir() or out.is_symlink():
            return False
        found = dataset_problems(out, check_contents=False)
        manifest = found["manifest"]
        if manifest is None or manifest.get("settings") != _settings(num_clips, seed, num_points) or \
                found["foreign"] or found["changed"] or found["missing"]:
            return False
        stats = found["stats"]
        if _VERIFIED.get(out) == stats:     # hashed by this process already and untouched since
            return True
        if dataset_problems(out)["changed"]:
            return False
        _VERIFIED[out] = stats
        return True

    if ready():
        _clean_stale_temps(out, log, locked=False)   # a killed regeneration's leftovers (pid dead)
        return out
    if int(num_clips) < 1:
        raise DataError(f"data.synthetic_num_clips must be at least 1 (got {num_clips}).")
    _refuse_unless_replaceable(out)
    with generator_lock(out, log):
        if ready():                         # another process made it while we waited
            return out
        _refuse_unless_replaceable(out)
        _clean_stale_temps(out, log)
        if out.exists():
            missing = dataset_problems(out)["missing"]
            log(f"[synthetic] regenerating {out}" + (f": files were removed ({_first(missing)})" if missing else
                                                      " with other settings" if any(out.iterdir()) else ""))
        return _generate(out, num_clips, seed, num_points, workers, progress)
