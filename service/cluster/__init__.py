"""Many replicas, one of each duty: leases and leaders, and streams on any replica.

leases.py        the ``Lease`` port's adapters (PostgreSQL advisory lock, file lock, Redis)
leader.py        ``Leader``: runs a duty only while holding its lease
bus.py           the watched-address registry, publisher and relay on Redis
coordination.py  what ``service.wiring`` builds from the settings
"""
