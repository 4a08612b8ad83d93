"""One stable CMDM run on Ray Train.

    python train_ray.py CONFIG [key=value ...] [--name NAME] [--resume-from CHECKPOINT [--partial]]

Examples:
    python train_ray.py configs/demo.yaml                            # the embedded dataset, CPU, minutes
    python train_ray.py configs/stable.yaml --name CMDM-Stable       # the stable recipe on HumanML3D
    python train_ray.py configs/stable.yaml --name CMDM-Finetune --resume-from outputs/CMDM-Stable/checkpoints/model_best.pt
    python train_ray.py configs/stable.yaml ray.num_workers=4 ray.use_gpu=true ray.address=auto

Rerunning a command with the same --name resumes that run from its checkpoints/last.pt.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python train_ray.py", description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/stable.yaml or configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides, e.g. training.lr=2e-5")
    parser.add_argument("--name", help="run name: outputs/NAME (default: the config's name)")
    parser.add_argument("--resume-from", help="initialise the weights from this checkpoint (ours or afford-motion's)")
    parser.add_argument("--partial", action="store_true",
                        help="with --resume-from: load only the keys whose names and shapes match (another arch)")
    parser.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a local Ray")
    args = parser.parse_intermixed_args(argv)

    from cmdm.config import load_config_or_exit
    overrides = list(args.overrides)
    if args.name is not None:                    # --name "" is refused by the config's check, not ignored
        overrides.append(f"name={args.name}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_config_or_exit(args.config, overrides)

    from cmdm.checkpoint_file import CheckpointError
    from cmdm.data.humanml3d import DataError
    from cmdm.model.text import TextModelError
    from cmdm.preflight import PreflightError
    from cmdm.resources import ResourceError
    from cmdm.train import RunError, TrainingFailed, run_training
    try:   # the rerun's last.pt and --resume-from are checked first, before data preparation and Ray
        metrics = run_training(cfg, init_from=args.resume_from, partial=args.partial)
    except (RunError, DataError, TextModelError, ResourceError, PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except CheckpointError as err:   # the evaluator's files (last.pt and --resume-from come back as RunError)
        print(f"error: evaluation.evaluator_dir / glove_dir: {err}", file=sys.stderr)
        return 2
    stop = metrics["stop_reason"]
    best = "none yet" if metrics["best"] is None else \
        f"{metrics['best_metric']} {metrics['best']:.4f} at step {metrics['best_step']}"
    reruns = metrics.get("lost_node_reruns") or 0
    print(f"Run {cfg.name}: {stop} at epoch {metrics['epoch']}, step {metrics['step']}; best {best}; "
          f"outputs in {metrics['run_dir']}" + (f" (rerun {reruns}x after a lost Ray node)" if reruns else ""))
    if stop == "diverged":
        print("error: training stopped on a non-finite loss or gradient; see logs/runtime.log for the remedy.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
