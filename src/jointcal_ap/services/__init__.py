"""Services the project starts for its tests, CI, benchmarks and demos (on loopback only).

- :func:`jointcal_ap.services.postgres.postgres_server`: a throwaway PostgreSQL server.
"""

from __future__ import annotations

__all__: list[str] = []
