"""The in-image package: `python -m container_src MODE`. The README describes the modes and the container contract."""

__version__ = "0.1.0"
