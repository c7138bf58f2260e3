"""winclip.calibration: reference memories, thresholds and evaluation (torch-free)."""
