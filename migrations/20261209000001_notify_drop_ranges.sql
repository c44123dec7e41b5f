-- Drops read in ranges (src/notify/drop_ranges.rs). A drop is one upload of an object (its id
-- hashes bucket, key, ETag and S3's sequencer); reading it splits it into byte ranges, each an
-- SQS work message any daemon may take. A range finished is recorded with its line count and
-- rejects, so a daemon killed mid-drop costs at most the ranges it had in flight, and the last
-- range to finish writes the rejects object with line numbers counted across the ranges.
--
-- `key` is stored (never logged) to find an object's older uploads: a new upload abandons the
-- ranges of the previous one that are not read yet.
--
-- New tables only: daemons of the previous release neither read nor write them.
CREATE TABLE IF NOT EXISTS notify_drops (
    drop_id      TEXT PRIMARY KEY,
    bucket       TEXT NOT NULL,
    key          TEXT NOT NULL,
    etag         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    ranges       INTEGER NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    accepted     BIGINT NOT NULL DEFAULT 0,
    rejected     BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    -- When its rejects object was written (or an earlier upload's removed): until then any
    -- read of its ranges writes it.
    reported_at  TIMESTAMPTZ,
    abandoned_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS notify_drops_unfinished
    ON notify_drops (bucket, key) WHERE finished_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX IF NOT EXISTS notify_drops_created ON notify_drops (created_at);

CREATE TABLE IF NOT EXISTS notify_drop_ranges (
    drop_id     TEXT NOT NULL REFERENCES notify_drops ON DELETE CASCADE,
    range_no    INTEGER NOT NULL,
    -- Times a daemon began reading it: more than one is a re-read (a killed daemon, a retry).
    reads       INTEGER NOT NULL DEFAULT 0,
    lines       BIGINT,
    accepted    BIGINT,
    rejected    BIGINT,
    -- Its rejects, numbered within the range; at most a bounded number listed.
    rejects     JSONB,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (drop_id, range_no)
);
