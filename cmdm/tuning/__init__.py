"""Hyper-parameter sweeps of CMDM training on Ray Tune (`tune_ray.py`), one concept per module:

    space.py        Param: one searched key, and the values a sweep checks it at
    sweep_file.py   the sweep YAML, read and checked once: Sweep, load_sweep, SweepError
    doctor.py       the stable-training guide's troubleshooting table: detectors, remedies, warm-start priors
    search.py       the Optuna searcher that queues the doctor's remedies (imports Optuna and Ray)
    trial.py        one trial: a driver function around a TorchTrainer, and its Train -> Tune report callback
    run.py          run_sweep: the Tuner with its searcher, ASHA, stopper and clock
    summary.py      summary.json / summary.md, from Tune's results and the trials' own files
    report.py       report/: curves, parameters against the metric, GIFs of the best trial
    export.py       `tune_ray.py export`: the best trial copied out as one unit

Nothing is imported here: space, sweep_file and doctor stay light for the CLI's checks, while search, trial and
run import Ray when they are imported.
"""
