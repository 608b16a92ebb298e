"""Command line: `python -m ssl_lessons {train,baselines,prepare-data,collapse-study,ablation,export,export-script,
curate,curation-study,bench} ...` (see --help of each)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from .baselines import load_or_compute_yardsticks
from .bench import main as bench_main, stream_rate, synthetic_data, tricks
from .config import PRESETS, Config, apply_overrides, make_config, parse_set_args
from .curation import DEDUP_THRESHOLD, DEFAULT_DESCRIPTOR, RELATIVE_THRESHOLD, curate, write_curation
from .data import load_cifar10, uses_streaming
from .descriptors import load_descriptor
from .distributed import is_main
from .errors import ConfigError, UserError, user_message
from .estimates import summary
from .images import image_files
from .export import export_backbone, export_snapshot, export_trajectory
from .launch import export_script, load_config_file
from .methods import METHODS
from .pretrained import PRETRAINED_DIR
from .runtime import pick_device, run_dir
from .studies import COLLAPSE_STUDIES, ablation_study, collapse_study_configs, curation_study
from .train import train

METHOD_HELP = f"{', '.join(METHODS)} ({Config.method} by default)"
# The studies train several short runs of the CIFAR-10 recipes; the ImageNet presets are not for them.
STUDY_PRESETS = [name for name in PRESETS if not name.startswith("imagenet-")]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (it prints the whole usage block before the cause)."""

    def error(self, message):
        print(f"error: {message} ({self.prog} --help lists the options)", file=sys.stderr)
        sys.exit(2)


def count(minimum: int):
    """An argparse type: an integer >= minimum, or a one-line error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _config(args):
    overrides = parse_set_args(args.set or [])
    if getattr(args, "config", None):  # a saved config (export-script's config.json), with --set on top
        cfg = load_config_file(args.config)
        for flag, value, saved in (("--method", getattr(args, "method", None), cfg.method),
                                   ("--preset", args.preset, cfg.preset)):
            if value is not None and value != saved:
                raise ConfigError(f"{flag} {value} disagrees with {args.config}, which says {saved}: give one")
        if getattr(args, "data", None):
            overrides["data_source"] = args.data
        return apply_overrides(cfg, overrides)
    if getattr(args, "method", None):
        if overrides.get("method", args.method) != args.method:
            raise ConfigError(f"--method {args.method} and --set method={overrides['method']} disagree: give one")
        overrides["method"] = args.method
    if getattr(args, "data", None):
        overrides["data_source"] = args.data
    return make_config(args.preset or "cifar10-laptop", overrides)


def cmd_prepare_data(args):
    t = time.perf_counter()
    data = load_cifar10(args.data)
    print(f"{data} ready in {time.perf_counter() - t:.1f} s")


def cmd_baselines(args):
    cfg = _config(args)
    print(json.dumps(load_or_compute_yardsticks(cfg), indent=1))


def cmd_train(args):
    cfg = _config(args)
    print(f"training {cfg.method} ({cfg.preset}) on {pick_device(cfg.device)}; overrides: {args.set or 'none'}",
          flush=True)
    run = train(cfg, allow_changes=tuple(args.allow_change or ()), stop_after=args.stop_after)
    result = run["result"]
    if result is None:  # stopped early
        return
    # lesson 0's yardsticks (raw pixels, a random backbone): collective under torchrun, so every rank takes part;
    # none for streamed full-resolution images, whose raw pixels are no yardstick
    marks = load_or_compute_yardsticks(cfg) if args.baselines and not uses_streaming(cfg) else {}
    if not is_main():
        return
    print(f"\nResults on CIFAR-10 test ({result['queries']} images; k-NN k={cfg.knn_k}, bank {result['bank']}):")
    rows = [(n, m) for n, m in marks.items()] + [(f"{cfg.method} ({result['train_minutes']:.1f} min)", result)]
    dense = any("dense_miou" in m for _, m in rows)
    print(f"  {'representation':28s} {'k-NN top-1':>10s} {'linear top-1':>12s}" + (" dense mIoU" if dense else ""))
    for name, m in rows:
        lin = f"{m['linear_top1']:.1f} %" if "linear_top1" in m else "-"
        miou = (f"{m['dense_miou']:.1f} %" if "dense_miou" in m else "-") if dense else ""
        print(f"  {name:28s} {m['knn_top1']:8.1f} % {lin:>12s} {miou:>10s}".rstrip())
    print(f"curves: {run['out_dir'] / 'curves.png'}; checkpoint and results.json beside it")


def cmd_collapse_study(args):
    for name, cfg in collapse_study_configs(args.method, args.preset).items():
        result = train(cfg)["result"]
        if result:
            last = result["final_logs"]
            if args.method == "dino":
                print(f"{name:28s} teacher entropy {last['teacher_entropy']:.3f} (ln K = "
                      f"{math.log(cfg.recipe.out_dim):.3f})  KL {last['kl']:.4f}  loss {last['loss']:.3f}  "
                      f"k-NN {result['knn_top1']:.1f} %", flush=True)
            else:
                print(f"{name:28s} output std {last['output_std']:.4f}  effective rank {last['effective_rank']:6.1f}  "
                      f"k-NN {result['knn_top1']:.1f} %", flush=True)


def cmd_ablation(args):
    rows = ablation_study(args.preset)
    print(f"\nDINOv2 ablation ({args.preset}); uniformity = mean log distance to the nearest test feature, higher = "
          "more spread:")
    print(f"  {'variant':16s} {'k-NN':>7s} {'linear':>7s} {'dense mIoU':>10s} {'uniformity':>10s} {'minutes':>7s}")
    for name, r in rows.items():
        linear = f"{r['linear_top1']:.1f} %" if r["linear_top1"] is not None else "-"
        miou = f"{r['dense_miou']:.1f} %" if r.get("dense_miou") is not None else "-"
        print(f"  {name:16s} {r['knn_top1']:5.1f} % {linear:>7s} {miou:>10s} {r['uniformity']:10.3f} "
              f"{r['train_minutes']:7.1f}")


def cmd_export(args):
    cfg = _config(args)
    where = dict(directory=args.out or PRETRAINED_DIR, expected=cfg, overwrite=args.overwrite)
    if args.snapshot and args.trajectory:
        raise ConfigError("--snapshot exports one kept snapshot, --trajectory all of them: give one of the two")
    if args.every != 1 and not args.trajectory:
        raise ConfigError("--every N picks every N-th snapshot of --trajectory: add --trajectory")
    if args.snapshot:
        path = export_snapshot(run_dir(cfg), args.name, args.snapshot, **where)
    elif args.trajectory:
        path = export_trajectory(run_dir(cfg), args.name, every=args.every, **where)
    else:
        path = export_backbone(run_dir(cfg), args.name, **where)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def cmd_export_script(args):
    cfg = _config(args)
    paths = export_script(cfg, args.out, nodes=args.nodes, gpus_per_node=args.gpus_per_node, hours=args.hours,
                          overwrite=args.overwrite)
    world = args.nodes * args.gpus_per_node
    print(f"{cfg.method} ({cfg.preset}) for {args.nodes} x {args.gpus_per_node} = {world} processes, global batch "
          f"{cfg.batch_size} ({cfg.batch_size // world} per process), parallel={cfg.parallel}:")
    for kind, path in paths.items():
        print(f"  {kind:9s} {path}")
    if cfg.backbone == "vit":
        print(summary(cfg, args.nodes, args.gpus_per_node, args.hours))
    print(f"run: bash {paths['launcher']}    or on SLURM: cd {paths['sbatch'].parent} && sbatch job.sbatch")


def cmd_curate(args):
    files = image_files(args.root)
    descriptor = load_descriptor(args.descriptor)
    pool = descriptor.describe_files(files)
    seeds = descriptor.describe_files(image_files(args.seeds)) if args.seeds else None
    evaluation = descriptor.describe_files(image_files(args.exclude)) if args.exclude else None
    stages = curate(pool, args.threshold, evaluation, args.relative_threshold, seeds, args.per_seed, args.size,
                    seed=args.seed)
    settings = {"descriptor": descriptor.name, "threshold": args.threshold, "relative_threshold":
                args.relative_threshold, "seeds": args.seeds, "per_seed": args.per_seed, "exclude": args.exclude,
                "size": args.size, "seed": args.seed}
    write_curation(args.out, files, args.root, stages, settings)
    for stage in stages:
        print(f"  {stage.name:24s} {len(stage.kept):8d} images   {stage.note}")
    print(f"curated list: {args.out}/curated.txt; removed files and why: {args.out}/removed.tsv; report.md beside them")


def cmd_curation_study(args):
    study, results = curation_study(args.preset, args.steps, args.descriptor)
    tau_self, tau_relative = study.thresholds
    print(f"\nthresholds ({args.descriptor}): copies {tau_self:.3f}, near-copies of the test set {tau_relative:.3f}")
    for stage in study.stages["retrieval"] + study.stages["balanced"][-1:]:
        print(f"  {stage.name:24s} {len(stage.kept):7d} images   {stage.note}")
    size = len(study.arms["retrieved"])
    print(f"\nSimCLR ({args.preset}), {args.steps} steps on {size} images of each pool; CIFAR-10 k-NN and linear probe:")
    for arm, r in results.items():
        print(f"  {arm:13s} k-NN {r['knn_top1']:5.1f} %   linear {r['linear_top1']:5.1f} %   {r['train_minutes']:.1f} min")


def cmd_bench(args):
    cfg = _config(args)
    data = synthetic_data(cfg) if args.synthetic else None
    if args.tricks:
        tricks(cfg, steps=args.steps, data=data)
    elif args.stream:
        stream_rate(cfg, args.stream, batches=args.steps, workers=args.workers)
    else:
        bench_main(cfg, steps=args.steps, data=data)


def main(argv=None):
    parser = Parser(prog="python -m ssl_lessons", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--preset", choices=list(PRESETS),
                       help="cifar10-laptop: ~15 min on a laptop CPU (the default); smoke: seconds, for tests")
        p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="override config fields, e.g. epochs=8 lr=1e-3")
        p.add_argument("--data", help="CIFAR-10 folder or .tar.gz; it wins over $SSL_LESSONS_CIFAR10 (which wins over "
                                      "data/cifar10.pt, then a download) and must exist")

    p = sub.add_parser("train", help="train a method, then k-NN + linear probe on the test set")
    common(p)
    p.add_argument("--method", help=METHOD_HELP + " (distill learns from a teacher in data/pretrained: "
                                                  "--set teacher=NAME)")
    p.add_argument("--allow-change", nargs="+", metavar="KEY",
                   help="resume a checkpoint with new values of these fields (e.g. lr after a NaN); recorded in "
                        "the checkpoint and results.json")
    p.add_argument("--stop-after", type=count(1), metavar="STEPS",
                   help="stop after this many steps in all (with a checkpoint), as a job's time limit would; the "
                        "same command without it resumes")
    p.add_argument("--config", help="a saved config (export-script's config.json) instead of --method/--preset; "
                                    "--set still applies on top")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="do not print lesson 0's yardsticks beside the result")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("baselines", help="lesson 0's yardsticks: raw pixels and a random backbone")
    common(p)
    p.set_defaults(func=cmd_baselines)
    p = sub.add_parser("prepare-data", help="find CIFAR-10 and decode it once into data/cifar10.pt")
    p.add_argument("--data", help="CIFAR-10 folder or .tar.gz (else $SSL_LESSONS_CIFAR10, then a download)")
    p.set_defaults(func=cmd_prepare_data)
    p = sub.add_parser("collapse-study", help="lesson 2: BYOL without its predictor or momentum target; "
                                              "lesson 4 (--method dino): DINO without centering or sharpening")
    p.add_argument("--preset", default="cifar10-laptop", choices=STUDY_PRESETS)
    p.add_argument("--method", default="byol", choices=list(COLLAPSE_STUDIES))
    p.set_defaults(func=cmd_collapse_study)
    p = sub.add_parser("ablation", help="lesson 6: DINOv2's recipe against itself without KoLeo, with EMA "
                                        "centering, with a shared head, and with 4 registers")
    p.add_argument("--preset", default="cifar10-laptop", choices=STUDY_PRESETS)
    p.set_defaults(func=cmd_ablation)
    p = sub.add_parser("export", help="save a finished run's evaluated backbone in fp16 to data/pretrained/NAME.pt")
    common(p)
    p.add_argument("--method", help=METHOD_HELP)
    p.add_argument("--name", required=True, help="the backbone's name: data/pretrained/NAME.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing backbone of that name")
    p.add_argument("--out", help="the folder to write NAME.pt into (default data/pretrained)")
    p.add_argument("--snapshot", help="export the snapshot the run kept at this step (keep_snapshots=true), with its "
                                      "heads, instead of the final backbone; 'best-dense': the step of the highest "
                                      "dense mIoU (periodic_dense=true)")
    p.add_argument("--trajectory", action="store_true", help="export the backbones of the run's kept snapshots (no "
                                                             "heads) into one file")
    p.add_argument("--every", type=count(1), default=1, help="with --trajectory: every N-th snapshot (default 1: all)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("export-script", help="write a run's config, a torchrun launcher and a SLURM script for "
                                              "many GPUs (lesson 7)")
    common(p)
    p.add_argument("--method", help=METHOD_HELP)
    p.add_argument("--nodes", type=count(1), default=1)
    p.add_argument("--gpus-per-node", type=count(1), default=8)
    p.add_argument("--hours", type=count(1), default=24, help="the SLURM job's time limit in hours")
    p.add_argument("--out", required=True, help="folder for config.json, launch.sh and job.sbatch")
    p.add_argument("--overwrite", action="store_true", help="replace those files where --out has them already")
    p.set_defaults(func=cmd_export_script)
    p = sub.add_parser("curate", help="lesson 8: curate a folder of images as DINOv2 and DINOv3 did (deduplicate, "
                                       "retrieve near seed images, sample evenly over clusters)")
    p.add_argument("root", help="the folder of uncurated images (any depth; an ImageFolder tree or not)")
    p.add_argument("--out", required=True, help="folder for curated.txt, removed.tsv and the report")
    p.add_argument("--descriptor", default=DEFAULT_DESCRIPTOR,
                   help=f"what images are compared by: an exported backbone (default {DEFAULT_DESCRIPTOR}), a .pt "
                        "file, 'pixels', 'random-vit', or timm:MODEL when online")
    p.add_argument("--threshold", type=float, default=DEDUP_THRESHOLD,
                   help=f"cosine above which two images are copies (default {DEDUP_THRESHOLD}: 1 %% of distinct "
                        "CIFAR-10 test images have a neighbour above it under the default descriptor; another "
                        "descriptor needs its own: lesson 8, section 3.2)")
    p.add_argument("--exclude", metavar="DIR", help="evaluation images: pool images near any of them are removed")
    p.add_argument("--relative-threshold", type=float, default=RELATIVE_THRESHOLD,
                   help=f"cosine for --exclude (default {RELATIVE_THRESHOLD}: 5 %% of distinct test images; looser than "
                        "--threshold, as DINOv2's)")
    p.add_argument("--seeds", metavar="DIR", help="curated seed images: keep only the pool images nearest to them")
    p.add_argument("--per-seed", type=count(1), default=4, help="pool images retrieved per seed image (DINOv2: 4)")
    p.add_argument("--size", type=count(1), help="draw this many images evenly over a hierarchical k-means (DINOv3)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and the sampling")
    p.set_defaults(func=cmd_curate)
    p = sub.add_parser("curation-study", help="lesson 8: SimCLR pretrained for equal steps on equal-sized pools "
                                               "from each curation stage (uncurated, deduplicated, retrieved, balanced)")
    p.add_argument("--preset", default="cifar10-laptop", choices=STUDY_PRESETS)
    p.add_argument("--steps", type=count(1), default=100, help="training steps on each pool (lesson 8: 100)")
    p.add_argument("--descriptor", default=DEFAULT_DESCRIPTOR, help="the backbone the curation compares images by")
    p.set_defaults(func=cmd_curation_study)
    p = sub.add_parser("bench", help="training and augmentation images/s for a preset (a benchmark, not a test)")
    common(p)
    p.add_argument("--method", help=METHOD_HELP)
    p.add_argument("--steps", type=count(1), default=20)
    p.add_argument("--tricks", action="store_true", help="DINOv2's sequence packing and efficient stochastic depth, "
                                                        "each on and off (lesson 7)")
    p.add_argument("--stream", metavar="DIR", help="the streaming loader's images/s on this ImageFolder tree")
    p.add_argument("--workers", type=count(0), default=2, help="DataLoader workers for --stream")
    p.add_argument("--synthetic", action="store_true", help="random images at image_size instead of the dataset "
                                                            "(speed only; with --tricks)")
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is intact; the same command resumes from it", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
