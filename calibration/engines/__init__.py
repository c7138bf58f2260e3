"""Reduced-precision engines for an existing bundle, made on the edge box without torch.

`BUILDERS` is the table: (backend, precision) -> the builder (a `Builder`,
base.py) that makes such an engine from the bundle's fp32 graph and the line's
real frames. Every builder's engine passes the same accuracy guard (guard.py),
run on the backend the engine is for, before it is added (build.py). A new
builder is one module in this package and one row here: it brings its own
winclip-quantize options, tools, side files and guard compute precision. Its
precision must be a row of runtime/defaults.py PRECISIONS, which says where
`--precision auto` tries it (a new precision name is a runtime fact: bundles
holding it must load on a box without this package).
"""

from __future__ import annotations

from winclip.calibration.engines import fp16, int8, openvino_int8
from winclip.calibration.engines.base import Builder

BUILDERS: dict[tuple[str, str], Builder] = {(builder.backend, builder.precision): builder
                                            for builder in (int8.BUILDER, fp16.BUILDER, openvino_int8.BUILDER)}

__all__ = ["BUILDERS", "Builder"]
