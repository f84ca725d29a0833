"""The version of dramatiq-preview (read by setup.cfg and the OpenAPI document)."""

__version__ = "0.1.0"
