"""Detectors: small pure units that look at one event of a task and return a trip or nothing.

They hold no state of their own and do no I/O: the session ledger keeps each task's counters
and windows and asks the detectors, so the same logic serves every state backend. Each declares
itself (``spec.Detector``) and ``registry.py`` lists them all, once, for both ledgers and replay.
"""

from proxy.detectors.base import Trip, TripReason

__all__ = ["Trip", "TripReason"]
