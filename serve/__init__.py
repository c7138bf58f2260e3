"""winclip.serve: engines of a bundle served to many cameras through Triton Inference Server.

Imports the core (winclip.runtime) and is never imported by it; the edge side reaches a served
engine through the triton backend (winclip.runtime.backends.triton).
"""
