"""Errors of the registry, importable without MLflow."""


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message is one line for the user."""
