"""The runtime shell: everything the daemon needs around the pure core, each piece usable on its own.

* ``config``  — ``load_config(path, env) -> KeeperConfig``: TOML + ``KEEPER_*`` env (+ ``.env``), pydantic v2,
  frozen; bad values raise ``ConfigError`` naming field, value and what is allowed; secrets hidden.
* ``signer``  — ``load_signer(SignerConfig) -> LocalAccount`` from ``KEEPER_PRIVATE_KEY`` or a keystore.
* ``logging`` — ``configure_logging(fmt, level)``: structlog JSON / console, ``SecretRedactor``.
* ``metrics`` — ``KeeperMetrics``: Prometheus metrics in their own registry.
* ``health``  — ``HealthState`` + ``HealthServer``: ``GET /healthz`` and ``GET /metrics`` on loopback.
* ``alerts``  — ``AlertSink``: webhook alerts, rate-limited and deduplicated, never raising.

The shell imports the core (``keeper.domain``, ``keeper.risk``, ``keeper.planner``), never the reverse.
"""
