-- The idempotency ledger: which pipeline already succeeded for which interaction key, so a
-- redelivered message re-runs only what failed, and two deliveries of one key never run the
-- same pipeline at the same time (see src/ledger.rs for the claim protocol).
CREATE TABLE IF NOT EXISTS pipeline_ledger (
    key           TEXT        NOT NULL,
    pipeline      TEXT        NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    attempts      INTEGER     NOT NULL DEFAULT 1,
    last_error    TEXT,
    -- The claim: who runs it now, and until when the claim holds if that worker dies.
    claim_token   UUID,
    claimed_until TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key, pipeline)
);
