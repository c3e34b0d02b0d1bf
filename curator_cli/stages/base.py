"""``ProcessingStage``: the contract every stage follows, compatible with NeMo Curator 1.x.

NeMo Curator 1.0 spelled the class attributes ``_name``/``_resources``/``_batch_size``; later
releases spell them ``name``/``resources``/``batch_size``. Both spellings work here, as class
attributes or as dataclass fields, and reading either spelling gives the same value.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from curator_cli.stages.resources import Resources
from curator_cli.tasks import Task
from curator_cli.stages.worker_metadata import NodeInfo, WorkerMetadata

X = TypeVar("X", bound=Task)
Y = TypeVar("Y", bound=Task)

_DEFAULT_BATCH_SIZE = 1


def _own_value(stage: ProcessingStage, attr: str) -> Any:
    """The value a subclass or instance gave ``attr``, ignoring ProcessingStage's own property."""
    if attr in stage.__dict__:
        return stage.__dict__[attr]
    for klass in type(stage).__mro__:
        if klass is ProcessingStage:
            break
        if attr in klass.__dict__:
            return klass.__dict__[attr]
    return None


def _underscore_spelling(public: str) -> property:
    """NeMo 1.0's ``_<public>``: reads the value ``public`` gives; setting it sets that value (stored
    where ``public``'s own getter looks first, ``__dict__["_<public>"]``)."""

    def get(stage: ProcessingStage) -> Any:
        return getattr(stage, public)

    def set_(stage: ProcessingStage, value: Any) -> None:
        stage.__dict__[f"_{public}"] = value

    return property(get, set_)


def apply_to_tasks(stage: ProcessingStage, tasks: list[Task], handle: Callable[[Task], Any]) -> list:
    """``handle`` each task after checking it against ``stage.inputs()``; a returned list fans out,
    ``None`` filters the task out. The loop behind ``process_batch`` (and the tensor fast path)."""
    results: list = []
    for task in tasks:
        missing = stage.missing_inputs(task)
        if missing:
            raise ValueError(
                f"stage {stage.name!r} needs {', '.join(missing)} on its input task {task!r}, "
                "which an earlier stage should have set"
            )
        result = handle(task)
        if isinstance(result, list):
            results.extend(result)
        elif result is not None:
            results.append(result)
    return results


class ProcessingStage(ABC, Generic[X, Y]):
    """Base class of all stages: ``process`` one task into a task, a list of tasks, or ``None``.

    Hooks, called by the runner: ``setup_on_node`` once per machine, ``setup`` once per worker
    (load the model here), ``process``/``process_batch`` per task, ``teardown`` at the end.
    """

    # --- name / resources / batch_size, with NeMo 1.0's underscore spellings ---
    @property
    def name(self) -> str:
        return _own_value(self, "_name") or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    _name = _underscore_spelling("name")

    @property
    def resources(self) -> Resources:
        own = _own_value(self, "_resources")
        if own is not None:
            return own
        gpus = getattr(self, "num_gpus_per_worker", None)
        if isinstance(gpus, (int, float)) and gpus > 0:
            return Resources(gpus=float(gpus))
        return Resources()

    @resources.setter
    def resources(self, value: Resources) -> None:
        self.__dict__["_resources"] = value

    _resources = _underscore_spelling("resources")

    @property
    def batch_size(self) -> int:
        own = _own_value(self, "_batch_size")
        return _DEFAULT_BATCH_SIZE if own is None else own

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.__dict__["_batch_size"] = value

    _batch_size = _underscore_spelling("batch_size")

    # --- the contract ---
    @abstractmethod
    def process(self, task: X) -> Y | list[Y] | None:
        """Process one task: return a task, a list of tasks (fan-out) or ``None`` (filtered out)."""

    def process_batch(self, tasks: list[X]) -> list[Y]:
        """Process several tasks; the default checks ``inputs()`` and calls ``process`` on each."""
        return apply_to_tasks(self, tasks, self.process)

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """Called once per machine before any worker's ``setup`` (download or cache weights here)."""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Called once per worker before processing (load the model here)."""

    def teardown(self) -> None:
        """Called once per worker after processing (free the model here)."""

    def inputs(self) -> tuple[list[str], list[str]]:
        """Attributes this stage needs: (on the task, on each item of ``task.data``)."""
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        """Attributes this stage sets: (on the task, on each item of ``task.data``)."""
        return [], []

    def missing_inputs(self, task: Task) -> list[str]:
        """Names from ``inputs()`` that ``task`` lacks; empty when the task is acceptable."""
        top_level, per_item = self.inputs()
        missing = [attr for attr in top_level if not hasattr(task, attr)]
        data = getattr(task, "data", None)
        items = data if isinstance(data, list) else [data]
        for attr in per_item:
            if any(not hasattr(item, attr) for item in items):
                missing.append(f"data.{attr}")
        return missing

    def validate_input(self, task: Task) -> bool:
        """True when ``task`` has every attribute ``inputs()`` names."""
        return not self.missing_inputs(task)

    def supports_batch_processing(self) -> bool:
        return type(self).process_batch is not ProcessingStage.process_batch

    def num_workers(self) -> int | None:
        return None

    def with_(
        self,
        name: str | None = None,
        resources: Resources | None = None,
        batch_size: int | None = None,
    ) -> ProcessingStage:
        """A deep copy of this stage with name, resources or batch size overridden."""
        new = copy.deepcopy(self)
        if name is not None:
            new.name = name
        if resources is not None:
            new.resources = resources
        if batch_size is not None:
            new.batch_size = batch_size
        return new

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resources": self.resources,
            "batch_size": self.batch_size,
            "supports_batch_processing": self.supports_batch_processing(),
        }

    def __repr__(self) -> str:
        return type(self).__name__
