"""Prometheus metrics of the receiver. Per-message detail goes here, not to the logs."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES = Counter(
    "voltgate_cloud_messages_total", "MQTT messages committed, by outcome", ["outcome"]
)  # outcome: batch | status | dead_letter
MESSAGES_ACKED = Counter("voltgate_cloud_messages_acked_total", "MQTT messages acknowledged after commit")
SAMPLES_WRITTEN = Counter("voltgate_cloud_samples_written_total", "Samples inserted (duplicates excluded)")
RECORDS_WRITTEN = Counter(
    "voltgate_cloud_records_written_total", "Records inserted, by table", ["table"]
)  # samples | predictions | alerts
DUPLICATES_IGNORED = Counter(
    "voltgate_cloud_duplicates_ignored_total", "Records already stored (redeliveries), skipped by ON CONFLICT"
)
DEAD_LETTERS = Counter("voltgate_cloud_dead_letters_total", "Messages stored as dead letters")
INBOX_DROPPED = Counter(
    "voltgate_cloud_inbox_dropped_total", "Messages dropped unacknowledged because the inbox was full"
)
DATABASE_ERRORS = Counter("voltgate_cloud_database_errors_total", "Failed group writes (retried)")
COMMIT_SECONDS = Histogram(
    "voltgate_cloud_commit_seconds",
    "Time to write and commit one group of messages",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG_SECONDS = Histogram(
    "voltgate_cloud_lag_seconds",
    "From a batch's newest source timestamp to its commit",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
RECORDS_REFUSED = Counter(
    "voltgate_cloud_records_refused_total",
    "Records refused one by one (their message's other records stored), by reason",
    ["reason"],
)  # reason: cloud.ingest.Refusal — nul_in_text | ts_too_old | ts_in_future | value_not_finite
DEAD_LETTERS_PRUNED = Counter(
    "voltgate_cloud_dead_letters_pruned_total", "Dead letters deleted by the maintenance, by cause", ["cause"]
)  # cause: retention | size_cap
ACKS_PUBLISHED = Counter(
    "voltgate_cloud_acks_published_total", "Commit acknowledgements queued for a vehicle's downlink"
)
ACK_PUBLISH_FAILURES = Counter(
    "voltgate_cloud_ack_publish_failures_total",
    "Commit acknowledgements not published (the bus re-sends those rows)",
    ["reason"],
)  # reason: queue_full | encode
