-- migrate:up
-- An event_id identifies an event within its site (DESIGN.md "Idempotency"): the same id sent
-- by two sites is two events, so one tenant cannot suppress another's events by sending
-- predictable ids first. Every stored row stays: ids unique overall are unique per site.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (site_id, event_id);
