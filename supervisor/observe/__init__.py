"""What the supervisor shows: Prometheus metrics, /healthz and /readyz, systemd notifications, the start's progress."""
