"""Telemetry: structured logs (and, as they arrive, metrics and tracing)."""
