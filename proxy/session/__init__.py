"""Task state: the ledger interface and its backends."""
