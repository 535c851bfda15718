"""flowcraft-puller: run flowcraft workflows from Cloudflare Queues with Python node code."""

from flowcraft_puller.engine.errors import FatalNodeError, FlowcraftError
from flowcraft_puller.engine.nodes import BaseNode, NodeContext, NodeResult
from flowcraft_puller.registry import Registry

__version__ = "0.1.0"

__all__ = [
    "BaseNode",
    "FatalNodeError",
    "FlowcraftError",
    "NodeContext",
    "NodeResult",
    "Registry",
    "__version__",
]
