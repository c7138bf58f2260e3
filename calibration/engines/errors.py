"""The engine builders' error."""

from winclip.runtime.errors import WinclipError


class QuantizeError(WinclipError):
    """An engine that cannot be made, or whose accuracy guard refused it, with a one-line reason."""
