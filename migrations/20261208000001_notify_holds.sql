-- Why and until when a notification is held, for `conveyor notify status` ("deferred (quiet
-- hours) until <UTC> (<local time> <zone>)"), and in-doubt sends (src/notify/deliveries.rs).
--
-- On the delivery record: `held_for` says why `next_at` is in the future — `quiet_hours`,
-- `rate_limit`, `in_doubt`, `backoff` or `provider` — and `held_zone` the user's time zone for
-- quiet hours.
--
-- On the score (written when ranking holds a notification back): `send_after` and the same
-- two, so a notification ranked and not yet handed to a channel says until when it waits.
--
-- Nullable columns old daemons neither read nor write: safe while old and new daemons run
-- side by side in a rolling upgrade. An in-doubt send is a `sending` row without a claim whose
-- `claimed_until` is the end of its hold, which an old daemon already waits for.
ALTER TABLE notify_deliveries ADD COLUMN IF NOT EXISTS held_for TEXT;
ALTER TABLE notify_deliveries ADD COLUMN IF NOT EXISTS held_zone TEXT;
ALTER TABLE notify_scores ADD COLUMN IF NOT EXISTS send_after TIMESTAMPTZ;
ALTER TABLE notify_scores ADD COLUMN IF NOT EXISTS held_for TEXT;
ALTER TABLE notify_scores ADD COLUMN IF NOT EXISTS held_zone TEXT;
