"""What made an artefact: the versions of the packages involved, for an engine's or a bundle's record."""

from __future__ import annotations

from importlib import metadata


def package_versions(*dists: str) -> dict[str, str]:
    """{distribution: version} for those of `dists` that are installed."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
