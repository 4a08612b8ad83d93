"""What the driver makes sure of once, before Ray or any worker starts: the dataset (generated for the embedded
default, checked file by file), the evaluator (fitted and cached when there is none) and the caption features."""
from __future__ import annotations

from pathlib import Path

from cmdm.config import Config
from cmdm.data.humanml3d import DataError, SplitClips, check_dataset, clips_from_config, dataset_from_config
from cmdm.data.synthetic.writer import ensure_dataset
from cmdm.evaluation.evaluator import load_evaluator
from cmdm.evaluation.fit import prepare_evaluator
from cmdm.model.text import check_config_text_model, text_cache_path


def check_data_root(cfg: Config) -> None:
    """The instant part of `prepare`: a missing HumanML3D folder is said before anything else is checked."""
    if cfg.data.name != "synthetic" and not Path(cfg.data.root).is_dir():
        raise DataError(f"HumanML3D folder {cfg.data.root} (data.root) does not exist. Get HumanML3D from "
                        "https://github.com/EricGuo5513/HumanML3D and put it there (or set data.root=...), "
                        "or try the embedded dataset: python train_ray.py configs/demo.yaml")


def read_split(cfg: Config, split: str, read: dict | None) -> SplitClips:
    """A split's clips, read from the files at most once: `read` ({split: SplitClips}) keeps what was read for the
    later steps and the caller (a sweep's driver shares it with its trials); None reads without keeping."""
    if read is None:
        return clips_from_config(cfg.data, split, progress=False)
    if split not in read:
        read[split] = clips_from_config(cfg.data, split, progress=False)
    return read[split]


def prepare_data(cfg: Config, read: dict | None = None) -> None:
    """The dataset a config asks for, there and whole: the embedded set generated (or reused) for
    data.name == 'synthetic', then every file checked and the test split large enough to evaluate on."""
    check_data_root(cfg)
    if cfg.data.name == "synthetic":
        ensure_dataset(cfg.data.root, num_clips=cfg.data.synthetic_num_clips, seed=cfg.data.synthetic_seed,
                       num_points=cfg.data.synthetic_num_points)
    check_dataset(cfg.data.root, use_contacts=cfg.data.use_contacts)  # every file, once, before any worker
    test_set = dataset_from_config(cfg.data, "test", train=False, progress=False, clips=read_split(cfg, "test", read))
    if len(test_set) < cfg.evaluation.batch_size:
        raise DataError(f"{Path(cfg.data.root) / 'test.txt'} yields {len(test_set)} test clips, fewer than one "
                        f"R-precision batch (evaluation.batch_size = {cfg.evaluation.batch_size}): add test clips "
                        "(for the synthetic set: a larger data.synthetic_num_clips).")


def prepare(cfg: Config, log=print) -> dict[str, SplitClips]:
    """Make sure the data, the evaluator and the caption features exist before any worker starts (once, in the
    driver): workers only read them, so every evaluation of a run or a sweep uses the same data and evaluator.
    Returns the splits it read ({split: SplitClips}: the test split, and the train split when the caption
    features were computed), so that a sweep shares them with its trials without reading them again."""
    read: dict[str, SplitClips] = {}
    check_data_root(cfg)
    check_config_text_model(cfg)   # before any work: a text model this machine lacks stops the run here
    prepare_data(cfg, read)
    prepare_evaluator(cfg, progress=True, log=log)   # fitted and cached for a synthetic / custom set if needed
    load_evaluator(cfg, device="cpu")                # its files readable here, before any worker tries
    prepare_text_features(cfg, log=log, read=read)
    return read


def prepare_text_features(cfg: Config, log=print, read: dict | None = None) -> Path | None:
    """Encode every train/test caption once with the frozen text encoder and keep the features next to the
    data, so no run or sweep trial spends its first epoch re-encoding them. None if the folder is read-only."""
    path = text_cache_path(cfg)
    if path.is_file() or cfg.model.text_model.output != "pooled":   # per-token features would be GBs on disk
        return path if path.is_file() else None
    from tqdm import tqdm
    from cmdm.model.text import TextEncoder
    tm = cfg.model.text_model
    captions = sorted({c.text for split in ("train", "test") for e in read_split(cfg, split, read).entries()
                       for c in e.captions})
    encoder = TextEncoder(tm.name, tm.max_length, tm.output)
    for i in tqdm(range(0, len(captions), 256), desc="text features", unit="x256 captions"):
        encoder.encode(captions[i:i + 256])
    try:
        encoder.save_cache(path)
    except OSError as err:
        log(f"[text] could not cache caption features in {path.parent} ({err}); each run will encode them")
        return None
    return path
