"""One evaluation, end to end: model x task -> features -> probe -> score with interval -> store.

``run_evaluation`` is what the CLI, the papermill template and the tests call. A finished run
(same model, task, protocol, seed and n_train) is read back from the store rather than
recomputed, unless ``force``. Features come from the on-disk cache when present, so a run that
was killed resumes where extraction stopped, and the store only ever holds complete runs.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from biobench import config
from biobench.features import extract_features
from biobench.probes import make_probe
from biobench.stats import bootstrap_ci
from biobench.store import ModelRecord, ResultsStore, RunKey, RunRecord
from biobench.tasks import Task, TaskData, TaskDataMissing, get_task, subsample_train

VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "scikit-learn", "numpy",
                      "biobench-book")


@dataclass
class RunResult:
    run_id: int
    key: RunKey
    metric: str
    score: float
    ci_low: float | None
    ci_high: float | None
    n_train_used: int | None
    n_test: int | None
    n_skipped: int
    example_ids: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    reused: bool  # True when the run was read back from the store
    extra: dict[str, Any] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The project's commit, read at run time (never at import), or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _open_store(store: ResultsStore | str | Path | None) -> ResultsStore:
    if isinstance(store, ResultsStore):
        return store
    return ResultsStore(store if store is not None else config.store_path())


def _from_store(store: ResultsStore, key: RunKey) -> RunResult:
    run = store.get_run(key)
    preds = store.predictions(int(run["run_id"]))
    return RunResult(
        run_id=int(run["run_id"]), key=key, metric=run["metric"], score=run["score"],
        ci_low=run["ci_low"], ci_high=run["ci_high"], n_train_used=run["n_train_used"],
        n_test=run["n_test"], n_skipped=int(run["n_skipped"]),
        example_ids=list(preds["example_id"]), y_true=np.asarray(list(preds["y_true"])),
        y_pred=np.asarray(list(preds["y_pred"])), reused=True, extra=run["extra"],
    )


def model_record(info) -> ModelRecord:
    return ModelRecord(source="own", model=info.name, display=info.display, family=info.family,
                       params=info.params, resolution=info.resolution,
                       imagenet_top1=info.imagenet_top1, imagenet_source=info.imagenet_source,
                       extra={"loader": info.loader, "pretrained": info.pretrained})


def run_evaluation(model, task: str | Task, *, protocol: str | None = None, seed: int = 0,
                   n_train: int = -1, store: ResultsStore | str | Path | None = None,
                   data_root: Path | None = None, force: bool = False,
                   skip_unreadable: bool = False, batch_size: int = 32, n_bootstrap: int = 1000,
                   ci_level: float = 0.95, device: str = "cpu", cache: bool = True) -> RunResult:
    """Evaluate ``model`` (a registry name or a Backbone) on ``task`` and store the run."""
    from biobench.backbones import create_backbone, model_info

    task = get_task(task) if isinstance(task, str) else task
    protocol = protocol or task.default_probe
    model_name = model if isinstance(model, str) else model.info.name
    if isinstance(model, str):
        model_info(model_name)  # an unknown name fails now, before any data is read
    store = _open_store(store)
    key = RunKey(model_name, task.name, protocol, seed, n_train)
    if task.cross_fitted and n_train != -1:
        raise ValueError(f"task '{task.name}' predicts every example from the others "
                         f"(cross-fitting); n_train={n_train} does not apply: use -1")
    started = time.perf_counter()
    stored_is_current, data, fingerprint = _stored_run_state(store, key, task, data_root, force)
    if stored_is_current:
        return _from_store(store, key)
    # a stored run of other data (not current) is recomputed and replaced
    replace = force or store.has_run(key)
    train = subsample_train(data.train, n_train, seed)
    backbone = create_backbone(model_name, device=device) if isinstance(model, str) else model
    info = backbone.info  # after building: ad-hoc hub models know their resolution only now

    def features(examples, split):
        return extract_features(backbone, examples, task_name=task.name, split=split,
                                pooling=task.pooling, batch_size=batch_size, device=device,
                                cache=cache, skip_unreadable=skip_unreadable)

    f_train = features(train, "train") if train else None
    f_test = features(data.test, "test")
    kept_train = _keep(train, f_train.ids) if f_train else []
    kept_test = _keep(data.test, f_test.ids)
    train_x = f_train.x if f_train else np.zeros((0, backbone.feature_dim), np.float32)
    train_y = task.labels_array(kept_train)
    y_true = task.labels_array(kept_test)

    probe = make_probe(protocol, seed=seed)
    subset = TaskData(kept_train, kept_test, data.class_names, data.extra)
    y_pred = np.asarray(task.fit_predict(probe, train_x, train_y, f_test.x, subset))
    interval = bootstrap_ci(task.score, y_true, y_pred, n_bootstrap=n_bootstrap, level=ci_level,
                            seed=seed)
    extra = {"class_names": data.class_names, "ci_contains_estimate": interval.contains_estimate,
             "cross_fitted": task.cross_fitted, "data_fingerprint": fingerprint,
             "skipped_files": (f_train.skipped_files if f_train else []) + f_test.skipped_files}
    if hasattr(probe, "C_"):
        extra["probe_C"] = probe.C_
    # task-specific figures a protocol reports (re-ID top-k, open-set threshold, ...)
    extra.update(subset.extra.get("run_extra", {}))
    record = RunRecord(
        key=key, metric=task.metric_name, score=interval.estimate, ci_low=interval.low,
        ci_high=interval.high, ci_level=ci_level, n_bootstrap=n_bootstrap,
        n_train_used=None if task.cross_fitted else len(kept_train), n_test=len(kept_test),
        n_skipped=(f_train.n_skipped if f_train else 0) + f_test.n_skipped,
        versions=package_versions(), git_commit=git_commit(), device=device_description(device),
        wall_time_s=time.perf_counter() - started, extra=extra,
    )
    run_id = store.save_run(record, zip([ex.id for ex in kept_test], y_true, y_pred),
                            replace=replace)
    store.save_models([model_record(info)])
    return RunResult(run_id, key, record.metric, record.score, record.ci_low, record.ci_high,
                     record.n_train_used, record.n_test, record.n_skipped,
                     [ex.id for ex in kept_test], y_true, y_pred, reused=False, extra=extra)


def stored_run_is_current(store: ResultsStore, key: RunKey, task: Task,
                          data_root: Path | None = None) -> bool:
    """True when ``key`` is stored and still describes the task's data (its fingerprint
    matches), or is stored and the data is not here to check against."""
    return store.has_run(key) and _stored_run_state(store, key, task, data_root)[0]


def _stored_run_state(store: ResultsStore, key: RunKey, task: Task, data_root: Path | None,
                      ignore_stored: bool = False) -> tuple[bool, TaskData | None, str | None]:
    """(is the stored run current?, the task's data, its fingerprint).

    A stored run is current while its data fingerprint matches the task's data; when the data
    is absent there is nothing to check it against and it is trusted (data is then None).
    Without a stored run (or with ``ignore_stored``) missing data raises ``TaskDataMissing``.
    """
    stored = None if ignore_stored else store.get_run(key)
    try:
        data = task.load(data_root)  # raises TaskDataMissing with the download command
    except TaskDataMissing:
        if stored is not None:
            return True, None, None
        raise
    fingerprint = data_fingerprint(task, data)
    current = stored is not None and stored["extra"].get("data_fingerprint") == fingerprint
    return current, data, fingerprint


def data_fingerprint(task: Task, data: TaskData) -> str:
    """Hash of which examples, with which labels, sit in which split: a stored run is reused
    only while this is unchanged."""
    h = hashlib.sha256(f"{task.name}|{task.cross_fitted}".encode())
    for split, examples in (("train", data.train), ("test", data.test)):
        for ex in examples:
            h.update(f"{split}|{ex.id}|{json.dumps(np.asarray(ex.label).tolist())}\n".encode())
    return h.hexdigest()[:16]


def _keep(examples, ids) -> list:
    wanted = set(ids)
    return [ex for ex in examples if ex.id in wanted]
