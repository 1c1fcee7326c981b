from __future__ import annotations

import pytest
from hypothesis import settings

from routes.geojson import RouteSet, load_routes

from .helpers import DEMO_DIR

# CI machines are shared and noisy: no per-example deadlines, derandomised for repeatability.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def demo_routes() -> RouteSet:
    return load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
