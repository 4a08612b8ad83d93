"""Evaluation: the text-to-motion evaluator (official-weight compatible), its metrics, and evaluator fitting.

    from cmdm.evaluation import metrics
    from cmdm.evaluation.evaluator import load_evaluator
    ev = load_evaluator(cfg)                       # official HumanML3D evaluator, or the one fitted for other data
    m = ev.embed_motion(raw_features, lengths)      # (B, T, 263) raw features -> (B, D)
    t = ev.embed_text(tokens_list, texts)           # ['a/DET', 'man/NOUN', ...] per caption -> (B, D)
    metrics.r_precision(t, m); metrics.fid(real_m, m); ...

Modules, each importing only those before it: metrics (arrays only), networks (the official layout),
word_vectorizer, evaluator (the class, its file format, loading a saved one: `load_evaluator(cfg)`), sanity
(corrupted-motion checks), fit (fitting one; `prepare_evaluator(cfg)`, the driver's step), generate (sample + embed + score: what the loop and the CLI share).
The package itself imports none of them: the sweep's light processes (Ray Train's controller, through the
doctor's metric directions in `metrics`) must not pay for torch.
"""
