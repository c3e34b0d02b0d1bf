"""Stage API (NeMo Curator compatible) and the stages that ship with curator."""

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.resources import Resources

__all__ = ["ProcessingStage", "Resources"]
