"""A CMDM sweep on Ray Tune: Optuna (TPE) proposes, ASHA stops the weak, the guide's rules steer.

    python tune_ray.py SWEEP.yaml [key=value ...] [--address ADDR] [--resume]
    python tune_ray.py export SWEEP_DIR [--out DIR]

Examples:
    python tune_ray.py sweeps/demo.yaml                      # the embedded dataset, CPU, <= 15 minutes
    python tune_ray.py sweeps/stable.yaml                    # HumanML3D, the stable recipe's space
    python tune_ray.py sweeps/demo.yaml num_samples=4 base.training.max_epochs=2   # sweep / base-config overrides
    python tune_ray.py sweeps/demo.yaml --resume             # continue an interrupted sweep
    python tune_ray.py export outputs/CMDM-Demo-Sweep        # best trial -> outputs/CMDM-Demo-Sweep/best/

Overrides without a prefix set keys of the sweep file (num_samples, max_concurrent_trials, name, seed, ...);
`base.<dotted key>` sets a key of every trial's training config.
"""
import argparse
import sys


def export_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python tune_ray.py export",
                                description="Copy the best trial's model_best.pt, best_metrics.json and config.yaml.")
    p.add_argument("sweep_dir", help="the sweep folder, e.g. outputs/CMDM-Demo-Sweep")
    p.add_argument("--out", help="destination folder (default: SWEEP_DIR/best)")
    args = p.parse_args(argv)
    from cmdm.tuning.export import ExportError, export_best
    try:
        out = export_best(args.sweep_dir, args.out)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # a full disk, a read-only folder: the earlier export (if any) is left as it was
        print(f"error: the export to {args.out or 'SWEEP_DIR/best'} failed ({err}); nothing was changed there. "
              "Free space or choose a writable --out, then run the export again.", file=sys.stderr)
        return 2
    print(f"Exported the best trial to {out}\n"
          f"  evaluate:  python -m cmdm.evaluate {out / 'model_best.pt'}\n"
          f"  fine-tune: python train_ray.py {out / 'config.yaml'} --name CMDM-Finetune "
          f"--resume-from {out / 'model_best.pt'}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python tune_ray.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("sweep", help="sweep YAML, e.g. sweeps/demo.yaml or sweeps/stable.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="key=value on the sweep file, base.<key>=value on the trials")
    parser.add_argument("--address", default="", help="join this Ray cluster (e.g. auto) instead of a local Ray")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this file")
    args = parser.parse_intermixed_args(argv)

    from cmdm.tuning.sweep_file import SweepError, load_sweep
    try:
        sweep = load_sweep(args.sweep, args.overrides)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from cmdm.data.humanml3d import DataError
    from cmdm.checkpoint_file import CheckpointError
    from cmdm.model.text import TextModelError
    from cmdm.preflight import PreflightError
    from cmdm.resources import ResourceError
    from cmdm.tuning.run import run_sweep
    try:
        summary = run_sweep(sweep, address=args.address, resume=args.resume)
    except TextModelError as err:
        print(f"error: {err} (in a sweep: base.model.text_model.name=DIR)", file=sys.stderr)
        return 2
    except (ResourceError, PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as err:
        print(f"error: {err} In a sweep, paths of the training config are set with base.<key>=... (e.g. "
              "base.data.root=/data/HumanML3D) or under `overrides:` in the sweep file. To try sweeps without "
              "HumanML3D: python tune_ray.py sweeps/demo.yaml", file=sys.stderr)
        return 2
    return 0 if summary["best_trial"] else 1


if __name__ == "__main__":
    sys.exit(main())
