-- Notification delivery (SPEC §8, stage 3): what each channel did with each notification, and
-- the rate limiters' token buckets. Both are written by `notify-deliver` in every daemon sharing
-- this database.

-- One row per (tenant, event, channel): the at-most-once record and `conveyor notify status`'s
-- source. `claim` / `claimed_until` make one delivery at a time own a channel's send (a claim
-- outlives a crashed owner by at most its hold); `delivered` is final and stops every later send
-- on that channel; `failed` means the channel gave up (a permanent error or its attempts spent)
-- and the notification moved on to its failover. Errors are conveyor's own words and provider
-- codes — never content or addresses.
CREATE TABLE IF NOT EXISTS notify_deliveries (
    tenant_id     UUID        NOT NULL,
    event_id      TEXT        NOT NULL,
    channel       TEXT        NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'webhook')),
    state         TEXT        NOT NULL CHECK (state IN ('sending', 'retrying', 'deferred', 'delivered', 'failed')),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    claim         UUID,
    claimed_until TIMESTAMPTZ,
    -- deferred or retrying: not before this.
    next_at       TIMESTAMPTZ,
    last_error    TEXT,
    provider_id   TEXT,
    delivered_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id, channel)
);

CREATE INDEX IF NOT EXISTS notify_deliveries_event ON notify_deliveries (event_id);
CREATE INDEX IF NOT EXISTS notify_deliveries_updated ON notify_deliveries (updated_at);

-- A token bucket per (tenant, rateLimitKey): `tokens` as of `updated_at`; the refill since then
-- is computed when a token is taken, in the one statement that takes it (src/notify/bucket.rs).
CREATE TABLE IF NOT EXISTS notify_rate_buckets (
    tenant_id  UUID             NOT NULL,
    key        TEXT             NOT NULL,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
