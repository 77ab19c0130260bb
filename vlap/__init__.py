"""Tooling around the VLAP model package (CLI, demo, data, evaluation). Not shipped to the Hub."""
