"""Prometheus metrics of one shard process (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from splitasr.shared.process_metrics import process_registry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 5.0, 10.0)


class ShardMetrics:
    def __init__(self, model: str, role: str):
        self.registry = process_registry()
        labels = {"model": model, "role": role}
        self.info = Gauge("splitasr_shard_info", "Shard identity", list(labels), registry=self.registry)
        self.info.labels(**labels).set(1)
        self.stage_seconds = Histogram(
            "splitasr_stage_seconds",
            "Compute time per stage call",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "splitasr_queue_delay_seconds",
            "Wait before a stage call starts",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "splitasr_batch_size",
            "Sequences (decoder) or requests (encoders) per inference call",
            ["stage"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=self.registry,
        )
        self.queue_length = Gauge("splitasr_queue_length", "Requests waiting", ["stage"], registry=self.registry)
        self.queue_length_max = Gauge(
            "splitasr_queue_length_max", "Most requests ever waiting at once", ["stage"], registry=self.registry
        )
        self.overload_level = Gauge(
            "splitasr_overload_level",
            "0 normal, 1 partials backed off, 2 partials off, 3 rejecting new sessions",
            registry=self.registry,
        )
        self.rejected_sessions = Counter(
            "splitasr_sessions_rejected_total", "New sessions refused (overload or capacity)", registry=self.registry
        )
        self.speculations = Counter(
            "splitasr_speculative_finals_total", "FINALs started in a pause before the EOU", registry=self.registry
        )
        self.cache_hits = Counter(
            "splitasr_cache_hits_total", "Results served from the feature-hash cache", registry=self.registry
        )
        self.active_sessions = Gauge("splitasr_active_sessions", "Connected edge sessions", registry=self.registry)
        self.finals = Counter("splitasr_finals_total", "FINAL frames sent", registry=self.registry)
        self.stage_requests = Counter("splitasr_stage_requests_total", "STAGE_REQs taken", registry=self.registry)
        self.partials = Counter("splitasr_partials_total", "PARTIAL frames sent", registry=self.registry)
        self.dropped_partials = Counter(
            "splitasr_partials_dropped_total", "Partials superseded before sending", registry=self.registry
        )
        self.errors = Counter("splitasr_errors_total", "ERROR frames sent", ["code"], registry=self.registry)
        self.final_seconds = Histogram(
            "splitasr_final_latency_seconds",
            "EOU received to FINAL sent",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
