"""Integrations with other tools; each module here is optional."""
