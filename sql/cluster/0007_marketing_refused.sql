-- Marketing consent in one place: the users who must not be marketed to, by their latest consent record
-- (opted out of scoring altogether, or scored with --no-marketing). Every shipped audience query and the
-- action queue read it; a downstream query of its own should too. See docs/schema.md.
CREATE VIEW IF NOT EXISTS marketing_refused ON CLUSTER '{cluster}' AS
SELECT user_id, opted_out, updated_at
FROM consent FINAL
WHERE opted_out OR NOT marketing;
