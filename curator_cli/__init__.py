"""curator: batch image embeddings over sharded datasets, with NeMo Curator's stage API."""

from curator_cli.stages.runtime import device

__version__ = "0.1.0"

__all__ = ["__version__", "device"]
