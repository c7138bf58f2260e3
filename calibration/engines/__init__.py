"""Reduced-precision engines for an existing bundle, made on the edge box without torch.

`BUILDERS` is the table: an engine's name -> the builder that makes it from the
bundle's fp32 graph and the line's real frames. Every builder's engine passes
the same accuracy guard (guard.py) before it is added (build.py). A new builder
is one module in this package (precision, guard_device, settings_type,
calibration_frames, describe, make, record) and one row here.
"""

from __future__ import annotations

from winclip.calibration.engines import fp16, int8

BUILDERS = {builder.precision: builder for builder in (int8.BUILDER, fp16.BUILDER)}
