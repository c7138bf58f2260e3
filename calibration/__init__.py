"""winclip.calibration: line profiles, int8 quantization and evaluation (edge side, never torch).

Builds on winclip.runtime; the runtime never imports this package.
"""
