"""Task registry and name resolution.

``get_task(name)`` accepts:

- a registered name (``plankton_flowcam``, ``newt``, ...; ``list_tasks()``);
- ``folder:PATH``: your own folder of class folders, or a CSV file ``path,label,split``
  (``biobench.tasks.folder``);
- ``PATH.toml``: a task file giving such data a name and a title.

Registered tasks come from two places, found on first use (``discover``): every public module
of this package (so a new task here is one new file), and every module named by an entry point
in the group ``biobench.tasks`` of any installed distribution (a task class in your own
package: loading the entry point imports the module, whose ``@register_task`` registers it).
Importing this package imports no task module, so a wrong name is reported quickly.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from biobench.tasks import base
from biobench.tasks.base import (  # noqa: F401  (re-exported contract)
    Example,
    ImageRef,
    Prediction,
    Task,
    TaskData,
    TaskDataMissing,
    UnsupportedProtocol,
    register_task,
    subsample_train,
)

ENTRY_POINT_GROUP = "biobench.tasks"
# Modules of this package that hold machinery, not tasks: discovery skips them (as it skips
# private ``_*`` modules).
NOT_TASK_MODULES = frozenset({"base", "folder"})
# How a name that is not registered can still name a task (shown in errors and help).
NAME_SCHEMES = ("folder:PATH (a folder with train/ and test/ class folders, or a CSV file "
                "path,label,split)", "PATH.toml (a task file naming such data)")

_discovered = False


class UnknownTask(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def discover() -> None:
    """Import this package's task modules and the ``biobench.tasks`` entry points, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a plug-in that imports biobench.tasks must not recurse
    for module in pkgutil.iter_modules(__path__):
        if module.name not in NOT_TASK_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    from biobench.backbones.registry import load_entry_points

    load_entry_points(ENTRY_POINT_GROUP, "task")


def registered_tasks() -> dict[str, type[Task]]:
    """Every registered task class by name (after discovery)."""
    discover()
    return base.registered_tasks()


def list_tasks(group: str | None = None) -> list[str]:
    return sorted(n for n, t in registered_tasks().items() if group is None or t.group == group)


def get_task(name: str) -> Task:
    """The task called ``name``: registered, ``folder:PATH`` or ``PATH.toml`` (see above)."""
    from biobench.tasks.folder import own_task

    task = own_task(name)  # before discovery: an own task needs no registry
    if task is not None:
        return task
    tasks = registered_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownTask(f"Unknown task '{name}'.{hint} Valid tasks: {', '.join(sorted(tasks))}. "
                          f"Your own data: {'; '.join(NAME_SCHEMES)}.")
    return tasks[name]()
