"""The project's test settings (strict numerics, the ``rng`` fixture) for the native tests."""

from tests.conftest import rng  # noqa: F401  pylint: disable=unused-import
