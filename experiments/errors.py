"""Errors a user can cause and fix, shared by the data and tokenizer layers."""


class DataError(RuntimeError):
    """Missing or unusable data; the message says how to fix it."""
