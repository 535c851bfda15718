"""The local emulator: Cloudflare's Queues pull REST API and the Worker protocol on loopback,
SQLite-backed, with fault injection (``python -m flowcraft_puller.emulator``)."""
