"""A Prometheus registry per component that also exports the standard ``process_*`` (CPU seconds,
resident memory, open file descriptors, start time) and ``python_info`` metrics of its process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector


def process_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
