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
-- nothing: their entries go to the new workers. From the rename on, the events table is
-- locked for reads too until this commits: the copy and the two keys' builds take minutes
-- per tens of millions of events (README "Upgrades"); ingest keeps accepting meanwhile.
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

-- The days' partitions are added and removed by the workers, which own no tables, through
-- these functions, run as the schema's owner. Each names only this schema's tables (a
-- caller's temporary table named like a partition is never taken for one), writes times in
-- UTC and ISO whatever the caller's session says, and waits at most lock_timeout for a lock
-- (waiting longer behind a long reader would stall every batch queued behind it; the worker
-- tries again later).

-- A day's partition: made apart, then attached, which locks the events table only against
-- other attachments (CREATE TABLE ... PARTITION OF would stall every reader and writer for
-- as long as it waited). Days that retention removed are not added again (false): a late
-- event for such a day is refused, never counted twice. Two workers adding the same day at
-- once both succeed.
CREATE FUNCTION queueflow_add_event_day(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET lock_timeout = '2s' SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    partition text := format('%I.%I', current_schema(), 'events_d' || to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(partition) IS NOT NULL
       OR day < (SELECT kept_from FROM raw_retention) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %s (LIKE %I.events INCLUDING DEFAULTS INCLUDING GENERATED '
                   'INCLUDING CONSTRAINTS)', partition, current_schema());
    EXECUTE format('ALTER TABLE %I.events ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                   current_schema(), partition, day::timestamptz, (day + 1)::timestamptz);
    RETURN true;
EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN
    RETURN false;  -- another worker added it meanwhile
END $$;

-- Retention of a day, in three steps, each its own short transaction, so that no moment
-- exists in which a resend of the day's events could be stored again:
-- 1. its partition leaves the events table (the day is no longer read, nor written: a late
--    event for it is refused), and verify stops checking the days up to it;
CREATE FUNCTION queueflow_detach_event_day(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET lock_timeout = '2s' SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    partition text := format('%I.%I', current_schema(), 'events_d' || to_char(day, 'YYYYMMDD'));
BEGIN
    IF day >= (now() AT TIME ZONE 'UTC')::date - 1 THEN
        RAISE EXCEPTION 'refusing to remove the raw events of %: not older than yesterday', day;
    END IF;
    INSERT INTO raw_retention (kept_from) VALUES (day + 1)
    ON CONFLICT (only_row) DO UPDATE SET kept_from = greatest(raw_retention.kept_from, day + 1);
    IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass(partition)) THEN
        RETURN false;
    END IF;
    EXECUTE format('ALTER TABLE %I.events DETACH PARTITION %s', current_schema(), partition);
    RETURN true;
END $$;

-- 2. its ids leave event_ids, up to `chunk` per call, in key order after `after` (the last
--    key the previous call returned); returns the last key reached, NULL once none is left;
CREATE FUNCTION queueflow_expire_event_ids(day date, chunk integer, after text[])
RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    partition text := format('%I.%I', current_schema(), 'events_d' || to_char(day, 'YYYYMMDD'));
    last record;
BEGIN
    IF to_regclass(partition) IS NULL
       OR EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass(partition)) THEN
        RETURN NULL;  -- gone already, or still a partition (not detached: keep its ids)
    END IF;
    EXECUTE format(
        'WITH chunk AS ('
        '    SELECT site_id, occurred_at, event_id FROM %s'
        '    WHERE $1 IS NULL OR (site_id, occurred_at, event_id) > ($1[1], $1[2]::timestamptz, $1[3])'
        '    ORDER BY site_id, occurred_at, event_id LIMIT %s'
        '), gone AS ('
        '    DELETE FROM %I.event_ids i USING chunk c'
        '    WHERE i.site_id = c.site_id AND i.event_id = c.event_id AND i.date = %L'
        ') SELECT * FROM chunk ORDER BY site_id DESC, occurred_at DESC, event_id DESC LIMIT 1',
        partition, chunk, current_schema(), day)
    INTO last USING after;
    IF last IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN ARRAY[last.site_id, last.occurred_at::text, last.event_id];
END $$;

-- 3. the detached table is dropped.
CREATE FUNCTION queueflow_drop_event_day(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '2s' AS $$
DECLARE
    partition text := format('%I.%I', current_schema(), 'events_d' || to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(partition) IS NULL
       OR EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass(partition)) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %s', partition);
    RETURN true;
END $$;

-- They see this schema and, last, the temporary one (never searched for functions).
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['queueflow_add_event_day(date)', 'queueflow_detach_event_day(date)',
                              'queueflow_expire_event_ids(date, integer, text[])',
                              'queueflow_drop_event_day(date)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', fn, current_schema());
        -- Only the workers (granted below) may call them: removing days is not for every role.
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END $$;

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
        EXECUTE format('GRANT %s ON events, event_ids TO %s',
                       granted.privilege_type, granted.grantee);
        IF granted.privilege_type = 'INSERT' THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION queueflow_add_event_day(date), '
                           'queueflow_detach_event_day(date), '
                           'queueflow_expire_event_ids(date, integer, text[]), '
                           'queueflow_drop_event_day(date) TO %s', granted.grantee);
        END IF;
    END LOOP;
END $$;

-- raw_retention moves only through the functions above: readers may read it, no role but
-- the owner may write it (default privileges may have granted more).
DO $$
DECLARE
    granted record;
BEGIN
    FOR granted IN
        SELECT DISTINCT a.grantee::regrole::text AS grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'raw_retention'::regclass AND a.grantee NOT IN (0, c.relowner)
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON raw_retention FROM %s',
                       granted.grantee);
    END LOOP;
    FOR granted IN
        SELECT DISTINCT a.grantee::regrole::text AS grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'events_unpartitioned'::regclass AND a.grantee NOT IN (0, c.relowner)
          AND a.privilege_type = 'SELECT'
    LOOP
        EXECUTE format('GRANT SELECT ON raw_retention TO %s', granted.grantee);
    END LOOP;
END $$;

DROP TABLE events_unpartitioned;
