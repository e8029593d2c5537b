"""The in-image package: `python -m container_src MODE`. See DESIGN in the README for the container contract."""

__version__ = "0.1.0"
