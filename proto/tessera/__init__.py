"""Tessera: the `tessera` namespace (`tessera.sdk`, `tessera.agent`, `tessera.control_plane`, `tessera.v1`)."""

DISTRIBUTION = "tessera-kernel"  # the name Tessera is installed under (pyproject.toml [project] name)


def installed_version() -> str | None:
    """The installed distribution's version, or None when running from a tree that is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - the standard library always has it
        return None
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None
