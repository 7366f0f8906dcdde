-- migrate:up
-- Raw events partitioned by UTC day, so that retention drops whole days (no bulk DELETE,
-- no long lock) and a batch inserts into today's small partition instead of one index that
-- grows forever. A unique key of a partitioned table must hold the partition column, so
-- deduplication (DESIGN.md "Idempotency": one event per site and event_id, whatever its
-- timestamp) moves to event_ids, keyed by (site_id, event_id) alone: a resend on another
-- day, or carrying another day's timestamp, still conflicts there. Retention removes a day's
-- ids with its partition.

-- Workers of the previous release are held off here and fail once this commits (their
-- ON CONFLICT (site_id, event_id) names a key the new table does not have), acknowledging
-- nothing: their entries go to the new workers. The copy below reads an unchanging table.
LOCK TABLE events IN EXCLUSIVE MODE;
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;

CREATE TABLE events (
    event_id    text        NOT NULL,
    site_id     text        NOT NULL,
    event_type  text        NOT NULL,
    path        text        NOT NULL,
    user_id     text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    date        date        GENERATED ALWAYS AS ((occurred_at AT TIME ZONE 'UTC')::date) STORED,
    received_at timestamptz NOT NULL,
    referrer    text,
    properties  jsonb
) PARTITION BY RANGE (occurred_at);

-- Every accepted (site_id, event_id), with its event's day (so that retention finds a day's).
CREATE TABLE event_ids (
    site_id  text NOT NULL,
    event_id text NOT NULL,
    date     date NOT NULL
);

-- The first day whose raw events are kept: `queueflow verify` skips the days before it.
CREATE TABLE raw_retention (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    kept_from date NOT NULL
);

-- A day's partition, created by the workers ahead of time (and for a back-filled day when a
-- batch needs it). Workers own no tables, so this runs as the schema's owner; two workers
-- adding the same day at once both succeed. Adding or dropping a
-- partition locks the whole table for an instant: waiting longer than lock_timeout behind a
-- long reader (a verify) would stall every worker's batch queued behind it, so it gives up
-- and is tried again (days are added a week ahead).
CREATE FUNCTION queueflow_add_event_day(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    partition text := 'events_d' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(partition) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)', partition,
        day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    RETURN true;
EXCEPTION WHEN duplicate_table OR unique_violation THEN
    RETURN false;  -- another worker added it meanwhile
END $$;

-- Retention, one day at a time and in short transactions: each call removes the ids of up
-- to `chunk` of the day's events, in key order after `after` (the last key the previous call
-- returned), and returns the last key it reached, or NULL once none is left; then
-- queueflow_drop_event_day drops the partition itself.
CREATE FUNCTION queueflow_expire_event_ids(day date, chunk integer, after text[])
RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    partition text := 'events_d' || to_char(day, 'YYYYMMDD');
    last record;
BEGIN
    IF to_regclass(partition) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'WITH chunk AS ('
        '    SELECT site_id, occurred_at, event_id FROM %I'
        '    WHERE $1 IS NULL OR (site_id, occurred_at, event_id) > ($1[1], $1[2]::timestamptz, $1[3])'
        '    ORDER BY site_id, occurred_at, event_id LIMIT %s'
        '), gone AS ('
        '    DELETE FROM event_ids i USING chunk c'
        '    WHERE i.site_id = c.site_id AND i.event_id = c.event_id AND i.date = %L'
        ') SELECT * FROM chunk ORDER BY site_id DESC, occurred_at DESC, event_id DESC LIMIT 1',
        partition, chunk, day)
    INTO last USING after;
    IF last IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN ARRAY[last.site_id, last.occurred_at::text, last.event_id];
END $$;

-- The day's raw events go, whole, and verify stops checking the days up to it.
CREATE FUNCTION queueflow_drop_event_day(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    partition text := 'events_d' || to_char(day, 'YYYYMMDD');
BEGIN
    INSERT INTO raw_retention (kept_from) VALUES (day + 1)
    ON CONFLICT (only_row) DO UPDATE SET kept_from = greatest(raw_retention.kept_from, day + 1);
    IF to_regclass(partition) IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %I', partition);
    RETURN true;
END $$;
-- Only the workers (granted below) may call them: dropping days is not for every role.
REVOKE ALL ON FUNCTION queueflow_add_event_day(date), queueflow_expire_event_ids(date, integer, text[]),
    queueflow_drop_event_day(date) FROM PUBLIC;

-- The history, a partition per day it holds, then the week ahead.
SELECT queueflow_add_event_day(day) FROM (
    SELECT DISTINCT date AS day FROM events_unpartitioned
    UNION SELECT (now() AT TIME ZONE 'UTC')::date + ahead FROM generate_series(-1, 7) AS ahead
) days;
INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at, received_at,
                    referrer, properties)
SELECT event_id, site_id, event_type, path, user_id, occurred_at, received_at, referrer,
       properties
FROM events_unpartitioned;
INSERT INTO event_ids (site_id, event_id, date)
SELECT site_id, event_id, date FROM events_unpartitioned;
-- Built after the copy (faster than row by row). The events' key also serves reads by site
-- and time (the realtime window, verify's recount), in place of events_site_time.
ALTER TABLE event_ids ADD PRIMARY KEY (site_id, event_id);
ALTER TABLE events ADD PRIMARY KEY (site_id, occurred_at, event_id);

-- Whoever could read or write the old table can do the same with the new ones; whoever
-- inserted events (the workers) may add and expire days.
DO $$
DECLARE
    granted record;
BEGIN
    FOR granted IN
        SELECT DISTINCT a.grantee::regrole::text AS grantee, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'events_unpartitioned'::regclass AND a.grantee NOT IN (0, c.relowner)
          AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
    LOOP
        EXECUTE format('GRANT %s ON events, event_ids, raw_retention TO %s',
                       granted.privilege_type, granted.grantee);
        IF granted.privilege_type = 'INSERT' THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION queueflow_add_event_day(date), '
                           'queueflow_expire_event_ids(date, integer, text[]), '
                           'queueflow_drop_event_day(date) TO %s', granted.grantee);
        END IF;
    END LOOP;
END $$;

DROP TABLE events_unpartitioned;
