"""Errors lowbit-gguf reports to its users: each message says what went wrong and what to do."""


class LowbitError(Exception):
    """A failure the user can act on; the CLI prints its message without a traceback."""


class RuntimeNotBuilt(LowbitError):
    """The patched llama.cpp runtime for the current patches has not been built yet."""


class UnsupportedModel(LowbitError):
    """The model's architecture is outside what lowbit-gguf can convert or quantize."""


class BadGGUF(LowbitError):
    """A GGUF file is missing, unreadable or malformed."""
