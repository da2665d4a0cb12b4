"""Task registry. Every module in this package that defines a ``@register_task`` class is
imported here, so adding a task is one new file."""

from __future__ import annotations

import importlib
import pkgutil

from biobench.tasks.base import (  # noqa: F401  (re-exported contract)
    Example,
    ImageRef,
    Task,
    TaskData,
    TaskDataMissing,
    register_task,
    registered_tasks,
    subsample_train,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


class UnknownTask(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def list_tasks(group: str | None = None) -> list[str]:
    return sorted(n for n, t in registered_tasks().items() if group is None or t.group == group)


def get_task(name: str) -> Task:
    tasks = registered_tasks()
    if name not in tasks:
        valid = ", ".join(sorted(tasks))
        raise UnknownTask(f"Unknown task '{name}'. Valid tasks: {valid}")
    return tasks[name]()
