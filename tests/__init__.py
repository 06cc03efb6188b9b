"""Test suite of relpsp (a package so that helpers import as ``tests.helpers`` and ``tests.oracle``)."""
