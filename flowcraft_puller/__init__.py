"""flowcraft-puller: run flowcraft workflows from Cloudflare Queues with Python node code."""

__version__ = "0.1.0"
