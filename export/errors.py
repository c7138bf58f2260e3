"""The export's error (torch-free, so that the CLI can name it without importing torch)."""

from winclip.runtime.errors import WinclipError


class ExportError(WinclipError):
    """Bad export input or a failed export, with a one-line reason."""
