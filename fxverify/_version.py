"""The package version (its own module, so the modules the package imports can read it without
importing the package: no import cycle)."""

__version__ = "0.2.0"
