"""The inbound HTTP side: routing, tagging, forwarding, streaming, error rendering."""
