"""winclip.runtime: the edge side of winclip-edge.

Loads an engine bundle written by ``winclip-export`` and scores frames with ONNX
Runtime and numpy. Never imports torch or open_clip.
"""

__all__ = ["Detector", "FrameResult"]


def __getattr__(name):
    # Lazy, so `winclip.runtime.geometry` imports without onnxruntime or OpenCV.
    if name in __all__:
        from winclip.runtime import detector

        return getattr(detector, name)
    raise AttributeError(name)
