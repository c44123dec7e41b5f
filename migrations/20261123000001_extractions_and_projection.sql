-- Action-item extractions, computed once per interaction, model and prompt version, and
-- reused by every pipeline that needs them and by every redelivery (see src/extract/store.rs).
CREATE TABLE IF NOT EXISTS extractions (
    interaction_key   TEXT        NOT NULL,
    model             TEXT        NOT NULL,
    prompt_version    TEXT        NOT NULL,
    tenant_id         UUID        NOT NULL,
    -- The validated, merged action items (src/extract/mod.rs ActionItem as JSON).
    items             JSONB       NOT NULL,
    chunks            INTEGER     NOT NULL,
    prompt_tokens     BIGINT      NOT NULL DEFAULT 0,
    completion_tokens BIGINT      NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (interaction_key, model, prompt_version)
);

-- The PostgreSQL projection (src/pipeline/projection.rs): interactions and their action items,
-- written with upserts on stable keys. Content is not stored: its length and SHA-256 are.
CREATE TABLE IF NOT EXISTS projection_interactions (
    tenant_id          UUID        NOT NULL,
    interaction_key    TEXT        NOT NULL,
    interaction_id     UUID,
    interaction_type   TEXT        NOT NULL,
    source             TEXT        NOT NULL,
    user_id            TEXT        NOT NULL,
    account_id         TEXT,
    occurred_at        TIMESTAMPTZ NOT NULL,
    content_length     INTEGER     NOT NULL,
    content_sha256     TEXT        NOT NULL,
    action_item_count  INTEGER     NOT NULL,
    extraction_model   TEXT        NOT NULL,
    prompt_version     TEXT        NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, interaction_key)
);

CREATE TABLE IF NOT EXISTS projection_action_items (
    tenant_id        UUID        NOT NULL,
    action_item_id   TEXT        NOT NULL,
    interaction_key  TEXT        NOT NULL,
    description      TEXT        NOT NULL,
    owner_name       TEXT,
    owner_email      TEXT,
    due_date         DATE,
    status           TEXT        NOT NULL CHECK (status IN ('open', 'done')),
    priority         TEXT        CHECK (priority IN ('low', 'medium', 'high')),
    confidence       REAL        NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, action_item_id),
    FOREIGN KEY (tenant_id, interaction_key)
        REFERENCES projection_interactions (tenant_id, interaction_key) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS projection_action_items_by_interaction
    ON projection_action_items (tenant_id, interaction_key);
CREATE INDEX IF NOT EXISTS projection_action_items_open_by_due
    ON projection_action_items (tenant_id, due_date) WHERE status = 'open';
