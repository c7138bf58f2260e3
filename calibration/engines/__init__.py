"""Reduced-precision engines for an existing bundle, made on the edge box without torch.

`BUILDERS` is the table: (backend, precision) -> the builder that makes such an
engine from the bundle's fp32 graph and the line's real frames. Every builder's
engine passes the same accuracy guard (guard.py), run on the backend the engine
is for, before it is added (build.py). A new builder is one module in this
package (backend, precision, format, guard_device, settings_type, check_tools,
calibration_frames, describe, make, record; and guard_compute, the compute
precision the guard runs the engine at, where its backend has that choice) and
one row here.
"""

from __future__ import annotations

from winclip.calibration.engines import fp16, int8, openvino_int8

BUILDERS = {(builder.backend, builder.precision): builder
            for builder in (int8.BUILDER, fp16.BUILDER, openvino_int8.BUILDER)}
