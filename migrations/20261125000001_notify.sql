-- The notification system's state (SPEC §8): user preferences, and the priority score of each
-- event, computed once per (tenant, eventId) however often ranking runs.

-- Per tenant and user: the channels they can be reached on with their addresses, opt-outs,
-- failover order, quiet hours and segment. The document is validated by conveyor before it is
-- written (`conveyor notify prefs set|import`, `src/notify/prefs.rs`); addresses are personal data.
CREATE TABLE IF NOT EXISTS notify_preferences (
    tenant_id  UUID        NOT NULL,
    user_id    TEXT        NOT NULL,
    document   JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- One score per event: the first stored wins, so rankings racing in two processes, and every
-- redelivery, use the same priority. `reason` is the model's short explanation (derived from the
-- content: never logged).
CREATE TABLE IF NOT EXISTS notify_scores (
    tenant_id       UUID        NOT NULL,
    event_id        TEXT        NOT NULL,
    scorer          TEXT        NOT NULL,
    priority        SMALLINT    NOT NULL CHECK (priority BETWEEN 1 AND 5),
    score_breakdown JSONB       NOT NULL,
    reason          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
