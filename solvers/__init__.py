"""Solver profiles (JSON), shipped inside the package as ``fxverify._profiles``.

This directory is mapped onto that package name by pyproject.toml; it is not a top-level
package of its own. Add a profile by dropping a ``NAME.json`` here (schema:
fxverify/schemas/profile-v1.json), or point ``--solver`` at any profile file.
"""
