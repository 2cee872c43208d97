"""Tripwire: a transparent proxy that accounts and stops runaway multi-agent LLM tasks."""

__version__ = "0.1.0"
