"""Line profiles: one line's few-shot memory and thresholds, as data apart from the engine bundle.

layout.py     the folder's names, ProfileError, and reading versions.json (which version is current)
profile.py    LineProfile: one profile folder, read and written
versions.py   ProfileStore: every change a new version, undo, use, under the writers' lock
reference.py  the reference set: graph outputs of held-out normals, for thresholds and the drift watch
teach.py      teaching good parts: a new version with the parts in its memory and re-derived thresholds

The imports run one way, layout <- profile <- versions <- teach, so a versioned profile
loads through layout.py with no import back up.
"""
