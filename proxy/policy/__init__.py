"""Policy: which limits, loop settings and trip action apply to a call."""

from proxy.policy.rules import Effective, PolicyBook

__all__ = ["Effective", "PolicyBook"]
