"""One evaluation, end to end: model x task -> features -> probe -> score with interval -> store.

``run_evaluation`` is what the CLI, the grid, the papermill template and the tests call.

A run's identity is its ``RunKey`` (model, task, protocol, the probe's full hyper-parameters,
seed, n_train). A stored run with that key is read back instead of recomputed only while it is
*current*: the version of the scoring code (``code_version``: a hash of the probe, metric,
statistics and pipeline modules and of the task's own modules) and the fingerprint of the task's
data (``data_fingerprint``: examples, labels, split, and every image file's size and
modification time) both match. Anything else, or ``force``, recomputes and replaces it.
Features come from the on-disk cache when present, so a run that was killed resumes where
extraction stopped, and the store only ever holds complete runs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from biobench import config
from biobench.features import extract_features
from biobench import metrics, probes
from biobench.probes import make_probe
from biobench.progress import stage
from biobench.stats import bootstrap_ci
from biobench.store import ModelRecord, ResultsStore, RunKey, RunRecord, canonical_json
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


# The modules whose code decides every score, besides the task's and the probe's own.
SCORING_MODULES = ("biobench.metrics", "biobench.stats", "biobench.evaluate")


# The zero-shot protocol's modules: they decide its scores as the probe's decides a probe run's.
ZERO_SHOT = "zero_shot"
ZERO_SHOT_MODULES = ("biobench.zeroshot.base", "biobench.zeroshot.contrastive",
                     "biobench.zeroshot.adapters", "biobench.zeroshot.templates",
                     "biobench.zeroshot.run", "biobench.zeroshot.generative",
                     "biobench.zeroshot.baseline", "biobench.zeroshot.blip")


def code_version(task: Task, protocol: str) -> str:
    """A short hash of the code that turns features into a stored score for ``task`` scored
    with ``protocol``: the metric, statistics and pipeline modules, and every module along the
    task's and the probe's class hierarchies (``load``, ``fit_predict``, metric hooks, the
    probe's ``fit``). Editing any of them makes those stored runs stale, so they are recomputed
    instead of silently served. ``zero_shot`` hashes the zero-shot modules instead of a probe."""
    if protocol == ZERO_SHOT:
        return _source_hash(type(task), modules=ZERO_SHOT_MODULES)
    return _source_hash(type(task), type(make_probe(protocol)))


@functools.lru_cache(maxsize=None)
def _source_hash(*classes: type, modules: tuple[str, ...] = ()) -> str:
    import importlib

    files = {inspect.getsourcefile(sys.modules[name]) for name in SCORING_MODULES}
    for name in modules:  # modules that may not be imported yet (the zero-shot ones)
        try:
            files.add(inspect.getsourcefile(importlib.import_module(name)))
        except ImportError:  # an optional module that is absent decides nothing
            continue
    for cls in (c for klass in classes for c in klass.__mro__):
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "__file__", None) and cls.__module__ != "abc":
            files.add(inspect.getsourcefile(module))
    h = hashlib.sha256()
    for file in sorted(f for f in files if f):
        h.update(Path(file).name.encode())
        h.update(Path(file).read_bytes())
    return h.hexdigest()[:12]


def build_probe(protocol: str, seed: int, probe_params: Mapping[str, Any] | None = None):
    """The protocol's probe with the run's seed and any user hyper-parameters (None for
    ``zero_shot``, which fits nothing)."""
    if protocol == ZERO_SHOT:
        return None
    return make_probe(protocol, random_state=seed, **dict(probe_params or {}))


def probe_params_json(protocol: str, seed: int = 0,
                      probe_params: Mapping[str, Any] | None = None) -> str:
    """The probe's full hyper-parameters (defaults included, ``random_state`` = the seed) as
    canonical JSON: the form a run's identity stores. ``zero_shot``: its options as given."""
    if protocol == ZERO_SHOT:
        return canonical_json(dict(probe_params or {}))
    return canonical_json(probes.probe_params(build_probe(protocol, seed, probe_params)))


def run_key(model_name: str, task: Task, protocol: str, seed: int = 0, n_train: int = -1,
            probe_params: Mapping[str, Any] | None = None) -> RunKey:
    """The identity of a run: its probe's full hyper-parameters are part of it, so ``knn``
    with k=5 and k=10 are two runs, and a changed default is a new run."""
    return RunKey(model_name, task.name, protocol, seed, n_train,
                  probe_params_json(protocol, seed, probe_params))


def resampling_description(metric_name: str, strata: np.ndarray | None) -> str:
    """How the interval's bootstrap resampled test examples, stored next to the interval."""
    if strata is None:
        return "plain: test examples drawn with replacement"
    rule = metrics.metric_spec(metric_name).strata_rule
    return (f"stratified ({getattr(rule, '__name__', 'task strata')}): test examples drawn with "
            f"replacement within each of {len(np.unique(strata))} strata")


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
                       extra={"loader": info.loader, "pretrained": info.pretrained,
                              # an interpolated model's parents and alpha
                              **getattr(info, "provenance", {})})


def run_evaluation(model, task: str | Task, *, protocol: str | None = None, seed: int = 0,
                   n_train: int = -1, probe_params: Mapping[str, Any] | None = None,
                   store: ResultsStore | str | Path | None = None,
                   data_root: Path | None = None, force: bool = False,
                   skip_unreadable: bool = False, batch_size: int | None = None,
                   n_bootstrap: int = 1000,
                   ci_level: float = 0.95, device: str = "cpu", cache: bool = True) -> RunResult:
    """Evaluate ``model`` (a registry name or a Backbone) on ``task`` and store the run.

    ``probe_params`` sets the protocol's probe hyper-parameters (e.g. ``{"k": 10}`` for knn;
    for ``zero_shot``, the generative answerer's options, e.g. ``{"endpoint": ...}``);
    ``force`` recomputes even when a current run is stored (the cached features are reused).
    """
    from biobench.backbones import create_backbone

    task = get_task(task) if isinstance(task, str) else task
    protocol = protocol or task.default_probe
    task.check_protocol(protocol)  # before any data is read or model built
    model_name = model if isinstance(model, str) else getattr(model, "info", model).name
    if isinstance(model, str):
        from biobench.zeroshot.run import check_model_name

        # an unknown name fails now, before any data is read; chat:/random only zero-shot
        check_model_name(model_name, protocol)
    elif protocol == ZERO_SHOT and not _is_contrastive_model(model):
        raise TypeError(f"zero_shot needs a model name or a ContrastiveModel; got a "
                        f"{type(model).__name__} ('{model_name}') without a text tower")
    if protocol == ZERO_SHOT and n_train != -1:
        raise ValueError(f"zero_shot trains nothing; n_train={n_train} does not apply: use -1")
    if task.cross_fitted and n_train != -1:
        raise ValueError(f"task '{task.name}' predicts every example from the others "
                         f"(cross-fitting); n_train={n_train} does not apply: use -1")
    key = run_key(model_name, task, protocol, seed, n_train, probe_params)
    probe = build_probe(protocol, seed, probe_params)
    store = _open_store(store)
    started = time.perf_counter()
    stage(f"{model_name} on {task.name} ({protocol}, seed {seed}): loading the task's data")
    state = _stored_run_state(store, key, task, data_root, force)
    if state.current:
        stage(f"{model_name} on {task.name}: a current run is stored (run "
              f"{store.run_id(key)}); reading it back")
        return _from_store(store, key)
    data = state.data
    if protocol == ZERO_SHOT:
        return _run_zero_shot(model, task, data, key, store, state.fingerprint, started,
                              probe_params=probe_params, n_bootstrap=n_bootstrap,
                              ci_level=ci_level, seed=seed, batch_size=batch_size, device=device,
                              cache=cache, skip_unreadable=skip_unreadable)
    train = subsample_train(data.train, n_train, seed)
    stage(f"building model {model_name}")
    backbone = create_backbone(model_name, device=device) if isinstance(model, str) else model
    info = backbone.info  # after building: ad-hoc hub models know their resolution only now

    def features(examples, split):
        stage(f"features of {len(examples)} {split} examples ({task.name})")
        return extract_features(backbone, examples, task_name=task.name, split=split,
                                pooling=task.pooling, batch_size=batch_size, device=device,
                                cache=cache, skip_unreadable=skip_unreadable,
                                # a task whose scores need fp32 features says so (FishNet)
                                precision=task.feature_precision)

    f_train = features(train, "train") if train else None
    f_test = features(data.test, "test")
    kept_train = _keep(train, f_train.ids) if f_train else []
    kept_test = _keep(data.test, f_test.ids)
    # the cached matrices go to the probe as they are: memory-mapped, float16 or float32
    train_x = f_train.x if f_train else np.zeros((0, backbone.feature_dim), f_test.x.dtype)
    train_y = task.labels_array(kept_train)
    y_true = task.labels_array(kept_test)

    stage(f"fitting the {protocol} probe and predicting {len(kept_test)} test examples")
    subset = TaskData(kept_train, kept_test, data.class_names, data.extra)
    prediction = task.fit_predict(probe, train_x, train_y, f_test.x, subset, seed=seed)
    y_pred = np.asarray(prediction.y_pred)
    return _score_and_store(
        task, key, store, data, [ex.id for ex in kept_test], y_true, y_pred,
        info=info, fingerprint=state.fingerprint, started=started,
        n_train_used=None if task.cross_fitted else len(kept_train),
        n_skipped=(f_train.n_skipped if f_train else 0) + f_test.n_skipped,
        skipped_files=(f_train.skipped_files if f_train else []) + f_test.skipped_files,
        # task-specific figures the protocol measured (re-ID top-k, open-set threshold, ...)
        extra={"feature_precision": f_test.precision, "feature_batch_size": f_test.batch_size,
               **prediction.extra},
        n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed, device=device)


def _score_and_store(task: Task, key: RunKey, store: ResultsStore, data: TaskData,
                     example_ids: list[str], y_true: np.ndarray, y_pred: np.ndarray, *, info,
                     fingerprint: str | None, started: float, n_train_used: int | None,
                     n_skipped: int, skipped_files: list[str], extra: dict[str, Any],
                     n_bootstrap: int, ci_level: float, seed: int, device: str) -> RunResult:
    """The task's metric with its bootstrap interval, stored as the run of ``key`` (replacing
    a stored run of other data or older code in one transaction): every protocol ends here."""
    stage(f"bootstrap interval ({n_bootstrap} resamples)")
    strata = task.bootstrap_strata(y_true)
    interval = bootstrap_ci(task.score, y_true, y_pred, n_bootstrap=n_bootstrap, level=ci_level,
                            seed=seed, strata=strata)
    extra = {"class_names": data.class_names, "ci_contains_estimate": interval.contains_estimate,
             "bootstrap_resampling": resampling_description(task.metric_name, strata),
             "cross_fitted": task.cross_fitted, "data_fingerprint": fingerprint,
             "skipped_files": skipped_files,
             "metric_extras": task.metric_extras(y_true, y_pred), **extra}
    record = RunRecord(
        key=key, metric=task.metric_name, score=interval.estimate, ci_low=interval.low,
        ci_high=interval.high, ci_level=ci_level, n_bootstrap=n_bootstrap,
        n_train_used=n_train_used, n_test=len(example_ids), n_skipped=n_skipped,
        versions=package_versions(), git_commit=git_commit(),
        code_version=code_version(task, key.protocol), device=device_description(device),
        wall_time_s=time.perf_counter() - started, extra=extra,
    )
    run_id = store.save_run(record, zip(example_ids, y_true, y_pred), replace=True)
    store.save_models([model_record(info)])
    stage(f"{key.model} on {task.name}: {task.metric_name} = {interval.estimate:.4f} "
          f"[{interval.low:.4f}, {interval.high:.4f}], stored as run {run_id}")
    return RunResult(run_id, key, record.metric, record.score, record.ci_low, record.ci_high,
                     record.n_train_used, record.n_test, record.n_skipped,
                     list(example_ids), y_true, y_pred, reused=False, extra=extra)


def _is_contrastive_model(model) -> bool:
    from biobench.zeroshot.adapters import ContrastiveModel

    return isinstance(model, ContrastiveModel)


def _run_zero_shot(model, task: Task, data: TaskData, key: RunKey, store: ResultsStore,
                   fingerprint: str | None, started: float, *, probe_params, n_bootstrap: int,
                   ci_level: float, seed: int, batch_size: int | None, device: str, cache: bool,
                   skip_unreadable: bool) -> RunResult:
    """The zero_shot branch of ``run_evaluation``: questions answered instead of a probe fitted;
    the interval, the extras and the store as for every run."""
    from biobench.zeroshot.run import answer_task

    outcome = answer_task(model, task, data, device=device, batch_size=batch_size, cache=cache,
                          skip_unreadable=skip_unreadable, options=probe_params)
    return _score_and_store(
        task, key, store, data, list(outcome.example_ids), outcome.y_true, outcome.y_pred,
        info=outcome.info, fingerprint=fingerprint, started=started, n_train_used=0,
        n_skipped=outcome.n_skipped, skipped_files=outcome.skipped_files, extra=outcome.extra,
        n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed, device=device)


def stored_run_is_current(store: ResultsStore, key: RunKey, task: Task,
                          data_root: Path | None = None) -> bool:
    """True when ``key`` is stored and still current (see ``_stored_run_state``)."""
    return store.has_run(key) and _stored_run_state(store, key, task, data_root).current


@dataclass(frozen=True)
class StoredRunState:
    current: bool  # the stored run can be read back instead of recomputed
    data: TaskData | None  # the task's data (None when absent and a stored run is trusted)
    fingerprint: str | None


def _stored_run_state(store: ResultsStore, key: RunKey, task: Task, data_root: Path | None,
                      ignore_stored: bool = False) -> StoredRunState:
    """Is the stored run of ``key`` current, with the task's data and its fingerprint.

    Current means: stored by the same scoring code (``code_version``) from data with the same
    fingerprint. When the data is absent there is nothing to recompute from, so a stored run is
    trusted (data is then None). Without a stored run (or with ``ignore_stored``) missing data
    raises ``TaskDataMissing`` with the download command.
    """
    stored = None if ignore_stored else store.get_run(key)
    try:
        data = task.load(data_root)
    except TaskDataMissing:
        if stored is not None:
            return StoredRunState(True, None, None)
        raise
    fingerprint = data_fingerprint(task, data)
    current = (stored is not None
               and stored["extra"].get("data_fingerprint") == fingerprint
               and stored["code_version"] == code_version(task, key.protocol))
    return StoredRunState(current, data, fingerprint)


def data_fingerprint(task: Task, data: TaskData) -> str:
    """Hash of which examples, with which labels, sit in which split, and of each image file's
    size and modification time (a cheap stand-in for its content: a replaced or truncated image
    changes it): a stored run is reused only while this is unchanged."""
    h = hashlib.sha256(f"{task.name}|{task.cross_fitted}".encode())
    for split, examples in (("train", data.train), ("test", data.test)):
        for ex in examples:
            h.update(f"{split}|{ex.id}|{json.dumps(np.asarray(ex.label).tolist())}".encode())
            for ref in ex.images:
                h.update(f"|{ref.content_token()}".encode())
            h.update(b"\n")
    return h.hexdigest()[:16]


def _keep(examples, ids) -> list:
    wanted = set(ids)
    return [ex for ex in examples if ex.id in wanted]
