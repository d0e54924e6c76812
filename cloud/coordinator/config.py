"""Cluster configuration for ``splitasr up``: pools of shards, autoscaling, coordinator address.

YAML (``--config cluster.yaml``) or the embedded default: one English pool on tiny.en.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from splitasr.cloud.coordinator.autoscaler import AutoscalerConfig
from splitasr.cloud.coordinator.ladder import LadderConfig
from splitasr.models.sources import MODELS
from splitasr.shared.errors import ConfigError

# encoder B and decoder pools: scaled on busy fraction / decoder occupancy, no warm spares by default
LATER_STAGE_DEFAULTS = {"signal": "busy", "warm_spares": 0, "max_replicas": 4}


def later_stage_autoscaler(**overrides) -> AutoscalerConfig:
    return AutoscalerConfig(**{**LATER_STAGE_DEFAULTS, **overrides})


VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_VERSION = "default"  # a pool's own settings
SPOT_VERSION = "spot"  # the pool's spot replicas (reserved: not a name for ``versions:``)


@dataclass(frozen=True)
class SpotConfig:
    """Spot capacity of a pool: cheaper replicas that may vanish at any time, for batch-class work.

    Each is a whole chain in one process (stage 0 with its own encoder B and decoder), so losing
    one loses no other session's next stage; its sessions' edges replay on what is left."""

    replicas: int = 0
    price_per_hour: float = 0.3  # per replica-hour, in the unit of the pool's ``price_per_hour``

    def __post_init__(self) -> None:
        if not 0 <= self.replicas <= 64:
            raise ConfigError(f"spot.replicas must be in [0, 64], got {self.replicas}")
        if not (math.isfinite(self.price_per_hour) and self.price_per_hour >= 0):
            raise ConfigError(f"spot.price_per_hour must be >= 0, got {self.price_per_hour}")


@dataclass(frozen=True)
class PoolVersion:
    """A named variant of a pool's shard settings, for canary rollouts (``versions:`` of a pool)."""

    int8: bool | None = None  # None: the pool's
    threads: int | None = None
    shard_args: tuple[str, ...] = ()  # added to the pool's


@dataclass(frozen=True)
class PoolConfig:
    model: str = "tiny.en"
    languages: tuple[str, ...] = ("en",)  # "*": every language the model knows
    zones: tuple[str, ...] = ("local",)  # stage-0 replicas are spread over these zones
    region: str = "local"
    enc_b: int = 1  # minimum encoder-B replicas
    dec: int = 1  # minimum decoder replicas
    int8: bool = True
    threads: int = 1
    shard_args: tuple[str, ...] = ()
    whole_chain: bool = False  # every stage in each stage-0 process (the monolith; no enc_b/dec pools)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)  # stage 0 (enc_a)
    enc_b_autoscaler: AutoscalerConfig = field(default_factory=later_stage_autoscaler)
    dec_autoscaler: AutoscalerConfig = field(default_factory=later_stage_autoscaler)
    # Ray backend: what each stage's shard asks for, e.g. {"dec": {"CPU": 2, "GPU": 1}} (CPU: threads)
    stage_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    versions: dict[str, PoolVersion] = field(default_factory=dict)  # rollout targets by name
    version: str = DEFAULT_VERSION  # the version its shards run (stable; a canary's once promoted)
    ladder: LadderConfig = field(default_factory=LadderConfig)  # degradation under overload (ladder.py)
    fallback: str | None = None  # ladder level 3: new sessions go to this (smaller) model's pool
    probe: str | None = None  # JSONL manifest (file, text, language): rollouts are judged on WER too
    probe_clips: int = 4  # its first clips in the pool's languages, streamed per rollout step
    price_per_hour: float = 1.0  # cost of one on-demand replica-hour (any stage), for cost reports
    spot: SpotConfig = field(default_factory=SpotConfig)

    def for_version(self, name: str) -> PoolConfig:
        """This pool's settings in version ``name`` (``default``: as configured); ConfigError if unknown."""
        if name == DEFAULT_VERSION:
            return dataclasses.replace(self, version=name)
        if name not in self.versions:
            known = ", ".join([DEFAULT_VERSION, *self.versions])
            raise ConfigError(f"pool {self.model} has no version {name!r}; versions: {known}")
        v = self.versions[name]
        return dataclasses.replace(
            self,
            version=name,
            int8=self.int8 if v.int8 is None else v.int8,
            threads=self.threads if v.threads is None else v.threads,
            shard_args=self.shard_args + v.shard_args,
        )

    def spot_pool(self) -> PoolConfig:
        """The settings of this pool's spot replicas: whole chains, exactly ``spot.replicas`` of them."""
        fixed = AutoscalerConfig(
            min_replicas=self.spot.replicas, max_replicas=self.spot.replicas, warm_spares=0, predictive=False
        )
        return dataclasses.replace(
            self,
            version=SPOT_VERSION,
            versions={**self.versions, SPOT_VERSION: PoolVersion()},
            whole_chain=True,
            autoscaler=fixed,
        )

    def serves(self, language: str) -> bool:
        return language in self.languages or "*" in self.languages

    def autoscaler_for(self, stage: str) -> AutoscalerConfig:
        """The autoscaler of one stage's pool; the later stages' minimum is ``enc_b`` / ``dec``."""
        if stage == "enc_a":
            return self.autoscaler
        config, least = (self.enc_b_autoscaler, self.enc_b) if stage == "enc_b" else (self.dec_autoscaler, self.dec)
        return dataclasses.replace(config, min_replicas=least, max_replicas=max(least, config.max_replicas))

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"pool model {self.model!r} unknown; models are {', '.join(sorted(MODELS))}")
        if self.enc_b < 1 or self.dec < 1:
            raise ConfigError(f"pool {self.model}: enc_b and dec need at least 1 replica")
        if not self.zones:
            raise ConfigError(f"pool {self.model}: zones must not be empty")
        for stage, wanted in self.stage_resources.items():
            if stage not in ("enc_a", "enc_b", "dec") or any(v < 0 for v in wanted.values()):
                raise ConfigError(
                    f"pool {self.model}: stage_resources takes enc_a, enc_b, dec with amounts >= 0, "
                    f"got {stage}: {wanted}"
                )
        if not (math.isfinite(self.price_per_hour) and self.price_per_hour >= 0):
            raise ConfigError(f"pool {self.model}: price_per_hour must be >= 0, got {self.price_per_hour}")
        if SPOT_VERSION in self.versions and self.version != SPOT_VERSION:
            raise ConfigError(f"pool {self.model}: version name {SPOT_VERSION!r} is reserved for spot replicas")
        for name in [*self.versions, self.version]:
            if not VERSION_NAME.match(name):
                raise ConfigError(f"pool {self.model}: version names are [A-Za-z0-9._-]{{1,64}}, got {name!r}")
        if self.version != DEFAULT_VERSION and self.version not in self.versions:
            raise ConfigError(f"pool {self.model}: version {self.version!r} is not in its versions")
        if not 1 <= self.probe_clips <= 100:
            raise ConfigError(f"pool {self.model}: probe_clips must be in [1, 100], got {self.probe_clips}")
        for stage in ("enc_b", "dec"):
            if getattr(self, f"{stage}_autoscaler").min_replicas != 1:
                raise ConfigError(
                    f"pool {self.model}: set the minimum of {stage} replicas with `{stage}: N`, not min_replicas"
                )


@dataclass(frozen=True)
class ClusterConfig:
    pools: tuple[PoolConfig, ...] = (PoolConfig(),)
    host: str = "127.0.0.1"
    port: int = 0
    admin_token: str = ""
    zeroconf: bool = False
    decision_period_s: float = 1.0
    tls_cert: str | None = None  # serve https:// with this certificate chain (PEM) ...
    tls_key: str | None = None  # ... and its key
    backend: str = "local"  # local: child processes; ray: one actor per shard on a Ray cluster
    ray_address: str | None = None  # None: a private local Ray; "auto" or HOST:PORT: a running cluster
    ray_namespace: str = "splitasr"
    shard_host: str = "127.0.0.1"  # where Ray shards listen: "node" for their node's address
    zone_resources: bool = False  # Ray: zones as custom resources "zone:<name>" instead of node labels
    # the URL shards use to reach the coordinator (default: the address it binds); behind a
    # Kubernetes Service, e.g. http://splitasr-coordinator:7070
    public_url: str | None = None

    def __post_init__(self) -> None:
        models = [p.model for p in self.pools]
        if not models:
            raise ConfigError("a cluster needs at least one pool")
        if len(set(models)) != len(models):
            raise ConfigError(f"one pool per model, got {models}")
        for pool in self.pools:
            if pool.fallback is not None and (pool.fallback not in models or pool.fallback == pool.model):
                raise ConfigError(f"pool {pool.model}: fallback must be another pool's model, got {pool.fallback!r}")
        if self.zeroconf and self.host in ("", "0.0.0.0", "::"):
            raise ConfigError("zeroconf advertises the coordinator's address: give --host a concrete LAN address")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("coordinator TLS needs both tls_cert and tls_key")
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"backend must be local or ray, got {self.backend!r}")
        if self.ray_address is not None and self.backend != "ray":
            raise ConfigError("ray_address needs backend: ray")
        if self.public_url is not None and urlsplit(self.public_url).scheme not in ("http", "https"):
            raise ConfigError(f"public_url must be an http:// or https:// URL, got {self.public_url!r}")
        if self.decision_period_s <= 0:
            raise ConfigError(f"decision_period_s must be positive, got {self.decision_period_s}")

    def pool_for(self, language: str | None) -> PoolConfig | None:
        """The pool serving ``language``: an explicit language match first, then a '*' pool.

        No language (a session without a hint): the multilingual pool, which detects the language;
        the edge then moves the session to its language's pool (language routing). A cluster with
        no multilingual pool serves such sessions as English."""
        if language is None:
            multilingual = next((p for p in self.pools if "*" in p.languages or MODELS[p.model].multilingual), None)
            if multilingual is not None:
                return multilingual
            language = "en"
        for pool in self.pools:
            if language in pool.languages:
                return pool
        return next((p for p in self.pools if "*" in p.languages), None)

    def pool(self, model: str) -> PoolConfig:
        for p in self.pools:
            if p.model == model:
                return p
        raise ConfigError(f"no pool {model!r}; pools are {', '.join(p.model for p in self.pools)}")


SCALERS = {"autoscaler": {}, "enc_b_autoscaler": LATER_STAGE_DEFAULTS, "dec_autoscaler": LATER_STAGE_DEFAULTS}


def build_checked(cls, raw: dict, where: str):
    """``cls`` (a config dataclass) from ``raw``: unknown keys, wrong types and non-finite numbers are ConfigErrors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:  # types and values checked field by field ("east" is not a list of zones, "seventy" not a port)
        not_finite = sorted(k for k, v in raw.items() if isinstance(v, float) and not math.isfinite(v))
        if not_finite:
            raise ConfigError(f"{where}: {', '.join(not_finite)} must be finite numbers")
        return TypeAdapter(cls).validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise ConfigError(
            "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        ) from None


def load_config(path: str | Path | None = None, **overrides) -> ClusterConfig:
    """Read ``path`` (YAML) or the default.

    The admin token comes from the file, else $SPLITASR_ADMIN_TOKEN, else it is generated."""
    raw: dict = {}
    if path is not None:
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read cluster config {path}: {exc}") from None
    pools = []
    for i, pool in enumerate(raw.pop("pools", [{}]) if isinstance(raw, dict) else []):
        pool = dict(pool) if isinstance(pool, dict) else build_checked(PoolConfig, pool, f"pools[{i}]")
        if isinstance(pool.get("versions"), dict):
            versions = pool["versions"].items()
            pool["versions"] = {n: build_checked(PoolVersion, v, f"pools[{i}].versions.{n}") for n, v in versions}
        if "ladder" in pool:
            pool["ladder"] = build_checked(LadderConfig, pool["ladder"], f"pools[{i}].ladder")
        if "spot" in pool:
            pool["spot"] = build_checked(SpotConfig, pool["spot"], f"pools[{i}].spot")
        for key, defaults in SCALERS.items():
            if key in pool:
                given = pool[key]
                if isinstance(given, dict):
                    given = {**defaults, **given}
                pool[key] = build_checked(AutoscalerConfig, given, f"pools[{i}].{key}")
        pools.append(build_checked(PoolConfig, pool, f"pools[{i}]"))
    config = build_checked(ClusterConfig, {**raw, "pools": pools}, str(path or "cluster config"))
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    token = config.admin_token or os.environ.get("SPLITASR_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    return dataclasses.replace(config, admin_token=token)
