"""Typed status envelopes: workers answer ``{status, result, confidence, reason}``, and a
confidence gate decides what reaches the orchestrator.

``settings`` holds the policy's ``envelope:`` block, ``core`` the pure parts (the envelope
model, the check, the request rewrite, which stream events to hold back), ``gate`` what a
verdict does to a call (metrics, per-task counts, kills, escalation, blocking).

The package root imports nothing: the config module imports ``settings``, and everything
else imports the config.
"""
