"""The line's real frames for an engine builder: split once, reproducibly, and fed to calibration.

One split serves every builder: frames held out for the accuracy guard (never
calibrated on), one frame for the guard's few-shot memory, and the calibration
frames a static quantiser reads through the ecosystem's own interface
(ONNX Runtime's `CalibrationDataReader` here).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from winclip.calibration.engines.errors import QuantizeError
from winclip.runtime.command import log_skipped
from winclip.runtime.errors import first_line
from winclip.runtime.images import ImageReadError, display_path, list_images, read_image
from winclip.runtime.preprocess import Preprocessor

log = logging.getLogger(__name__)


@dataclass
class FrameSets:
    """Preprocessed (1, 3, H, W) frames, split: calibration, few-shot memory for the guard, held-out."""

    calibration: list[np.ndarray]
    memory: list[np.ndarray]
    holdout: list[np.ndarray]
    skipped: list[str] = field(default_factory=list)
    seed: int = 0


def load_frame_sets(folder: Path, preprocessor: Preprocessor, holdout: int, calibration: int,
                    seed: int = 0) -> FrameSets:
    """Read and split the images of `folder`; unreadable ones are skipped with a warning and counted."""
    try:
        paths, problems = list_images(folder)
    except ImageReadError as exc:
        raise QuantizeError(str(exc)) from None
    paths = sorted(paths)
    random.Random(seed).shuffle(paths)
    frames, skipped = [], list(problems)
    for path in paths:
        try:
            frames.append(preprocessor([read_image(path)]))
        except (ImageReadError, ValueError) as exc:
            skipped.append(first_line(exc) if isinstance(exc, ImageReadError) else f"{display_path(path)}: {exc}")
    log_skipped(log, "frames", skipped)
    memory = 1
    needed = holdout + memory + calibration
    if len(frames) < needed:
        raise QuantizeError(f"{display_path(folder)} has {len(frames)} usable images; {needed} are needed "
                            f"({holdout} held out for the guard, {memory} for its few-shot memory"
                            + (f", {calibration} to calibrate" if calibration else "") + ")")
    return FrameSets(calibration=frames[holdout + memory:holdout + memory + calibration] if calibration else [],
                     memory=frames[holdout:holdout + memory], holdout=frames[:holdout], skipped=skipped, seed=seed)


def frame_reader(batches: list[np.ndarray], input_name: str):
    """An ONNX Runtime `CalibrationDataReader` over preprocessed real frames, one frame per call."""
    from onnxruntime.quantization import CalibrationDataReader  # an optional extra: imported when used

    class FrameReader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self) -> dict | None:
            batch = next(self._next, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._next = iter(batches)

    return FrameReader()
