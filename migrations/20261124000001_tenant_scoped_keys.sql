-- Every idempotency key is tenant-scoped: two tenants reusing an interaction_id are two
-- interactions. Before this, a second tenant's event with a first tenant's interaction_id had
-- its pipelines skipped as "already succeeded" and could be given the first tenant's stored
-- extraction.
--
-- Existing rows stay valid. Extractions already record their tenant, so they keep matching.
-- Ledger rows do not know theirs: they get the empty tenant, which is what events without a
-- tenant (keyed by event or message id) use, so those keep matching; for tenant events an old
-- row no longer matches, and a redelivery in flight during the upgrade runs its (idempotent)
-- pipelines once more instead of being skipped.
ALTER TABLE pipeline_ledger ADD COLUMN IF NOT EXISTS tenant TEXT NOT NULL DEFAULT '';
ALTER TABLE pipeline_ledger DROP CONSTRAINT IF EXISTS pipeline_ledger_pkey;
ALTER TABLE pipeline_ledger ADD PRIMARY KEY (tenant, key, pipeline);

ALTER TABLE extractions DROP CONSTRAINT IF EXISTS extractions_pkey;
ALTER TABLE extractions ADD PRIMARY KEY (tenant_id, interaction_key, model, prompt_version);
