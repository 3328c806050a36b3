"""Tests of vidseg.convert, one module per public source (a package: its conftest must not shadow tests/conftest.py)."""
