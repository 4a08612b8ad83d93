"""`tune_ray.py export`: the sweep's best trial (model_best.pt, best_metrics.json, config.yaml) copied out as one
unit, ready for `python -m cmdm.evaluate` or `train_ray.py --resume-from`. Reads only the sweep folder's files
(sweep.json and each trial's checked best pair), so it works on a sweep that is still running or was killed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from cmdm.atomic import current_umask
from cmdm.evaluation.metrics import LOWER_IS_BETTER
from cmdm.run_files import RunFiles, SweepFiles, best_json_text, file_sha256, read_best


class ExportError(Exception):
    """`tune_ray.py export` cannot run: the message says which file or folder and what to do."""


def read_sweep_info(sweep_dir: Path) -> dict:
    """sweep.json of a sweep folder (what tune_ray.py wrote when the sweep started), checked."""
    info_file = SweepFiles(sweep_dir).sweep_json
    if not info_file.is_file():
        raise ExportError(f"{sweep_dir} is not a sweep folder (no sweep.json). Give the folder tune_ray.py "
                          "printed as 'Sweep folder', e.g. outputs/CMDM-Demo-Sweep.")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        info, problem = None, f"cannot be read as JSON ({err})"
    else:
        problem = "is not a JSON object with 'metric' and 'mode'"
    if isinstance(info, dict) and info.get("metric") in ("fid", "top1", "top2", "top3") \
            and info.get("mode") in ("min", "max"):
        return info
    raise ExportError(f"{info_file} {problem}: it must hold at least {{\"metric\": \"fid\", \"mode\": \"min\"}} "
                      "(metric one of fid, top1, top2, top3; mode min or max). tune_ray.py writes it when the sweep "
                      "starts: rerun `python tune_ray.py SWEEP.yaml --resume` with the sweep's file to rewrite it, or "
                      "restore those two keys by hand from the sweep file's metric and mode.")


def find_best_trial(sweep_dir: Path) -> tuple[Path, dict]:
    """The trial folder whose model_best.pt is best by the sweep's metric (works on unfinished sweeps).

    Each trial's record comes from `read_best`: best_metrics.json when it is the pair of the model_best.pt
    beside it (same sha256), else the record inside model_best.pt, so a crash between the two writes never
    ranks a trial by metrics its weights do not have."""
    metric = read_sweep_info(sweep_dir)["metric"]
    files = SweepFiles(sweep_dir)
    candidates = []
    for trial in files.trial_runs():
        rec = read_best(trial.checkpoints)
        v = rec.get(metric) if rec else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            candidates.append((v if LOWER_IS_BETTER[metric] else -v, trial.root, rec))
    if not candidates:
        raise ExportError(f"no trial in {files.trials} has a readable model_best.pt yet (no evaluation "
                          "finished): nothing to export. Wait for the sweep's first evaluation, or resume it with "
                          "`python tune_ray.py SWEEP.yaml --resume`.")
    _, run_dir, rec = min(candidates, key=lambda c: c[0])
    return run_dir, rec


EXPORT_FILES = ("model_best.pt", "best_metrics.json", "config.yaml", "SOURCE.txt")


def export_best(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Copy the best trial's model_best.pt, best_metrics.json and config.yaml to `out`, as one unit.

    The files are written into a temp folder beside `out` that is then renamed to `out`: a failure
    half-way leaves the previous export (or nothing), never one trial's weights beside another's config.
    An existing `out` is replaced only when it is an earlier export (SOURCE.txt and nothing but the
    export's files); anything else is refused, never deleted."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    run_dir, rec = find_best_trial(sweep_dir)
    out = Path(out).expanduser().resolve() if out else SweepFiles(sweep_dir).export
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: its folder {out.parent} does not exist. Create it first, or give a "
                          "destination inside an existing folder.")
    if out.exists():
        names = {p.name for p in out.iterdir()} if out.is_dir() else None
        if names is None or (names and ("SOURCE.txt" not in names or not names <= set(EXPORT_FILES))):
            raise ExportError(f"--out {out} exists and is not an earlier export of tune_ray.py (which holds only "
                              f"{', '.join(EXPORT_FILES)}): it is not replaced. Give another --out, or move it aside.")
    for _ in range(3):
        trial = RunFiles(run_dir)
        if not trial.config.is_file():
            raise ExportError(f"{trial.config} is missing: trial {run_dir.name} has weights but no config to build "
                              f"them with. Nothing was exported; restore the file, or evaluate "
                              f"{trial.best} directly with python -m cmdm.evaluate.")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            shutil.copyfile(trial.best, tmp / "model_best.pt")
            sha = file_sha256(tmp / "model_best.pt")
            if sha != rec.get("checkpoint_sha256"):   # the trial wrote a new best meanwhile: rank again
                run_dir, rec = find_best_trial(sweep_dir)
                continue
            (tmp / "best_metrics.json").write_text(best_json_text(
                {k: v for k, v in rec.items() if k != "checkpoint_sha256"}, sha))
            shutil.copyfile(trial.config, tmp / "config.yaml")
            (tmp / "SOURCE.txt").write_text(f"exported from trial {run_dir.name} of {sweep_dir}\n")
            os.chmod(tmp, 0o777 & ~current_umask())   # mkdtemp makes it 0700; mkdir would not
            _swap_in(tmp, out)
            return out
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    raise ExportError(f"the best trial's model_best.pt in {SweepFiles(sweep_dir).trials} kept changing while it was "
                      "exported (the sweep is running): nothing was exported; run the export again.")


def _swap_in(new: Path, out: Path) -> None:
    """Rename the finished folder `new` to `out`; an earlier export at `out` is set aside first and removed
    once the new one is in place (between the two renames `out` does not exist: old or nothing, never a mix)."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / out.name, out)    # put the earlier export back
        os.rmdir(old)
        raise
    shutil.rmtree(old)
