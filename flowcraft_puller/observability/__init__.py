"""Observability: structured logs, Prometheus metrics, health probes and systemd notify."""
