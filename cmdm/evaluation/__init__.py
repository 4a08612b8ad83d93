"""Evaluation: the text-to-motion evaluator (official-weight compatible), its metrics, and evaluator fitting.

    from cmdm.evaluation import load_evaluator, metrics
    ev = load_evaluator(cfg)                       # official HumanML3D evaluator, or the fitted one for other data
    m = ev.embed_motion(raw_features, lengths)      # (B, T, 263) raw features -> (B, D)
    t = ev.embed_text(tokens_list, texts)           # ['a/DET', 'man/NOUN', ...] per caption -> (B, D)
    metrics.r_precision(t, m); metrics.fid(real_m, m); ...
"""
from cmdm.evaluation import metrics
from cmdm.evaluation.evaluator import (
    Evaluator, load_evaluator, load_fitted_evaluator, load_official_evaluator,
)
from cmdm.evaluation.networks import CheckpointError, EvaluatorSizes
from cmdm.evaluation.word_vectorizer import VocabularyError


def ensure_evaluator(data_root, out_dir, **kwargs):
    """Find or fit (and cache) the evaluator for a HumanML3D-layout dataset; see cmdm.evaluation.fit."""
    from cmdm.evaluation.fit import ensure_evaluator as _ensure
    return _ensure(data_root, out_dir, **kwargs)


__all__ = ["metrics", "Evaluator", "EvaluatorSizes", "load_evaluator", "load_fitted_evaluator",
           "load_official_evaluator", "ensure_evaluator", "CheckpointError", "VocabularyError"]
