"""winclip.export: the workstation side of winclip-edge (torch + open_clip).

Loads an open_clip backbone, caches the prompt-ensemble text embeddings and
traces the windowed visual encoder into one verified ONNX graph.
"""
