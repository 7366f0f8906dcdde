-- migrate:up
-- Reporting over ranges: unique users are counted exactly over any range by OR-ing per-bucket
-- bitmaps of per-site user numbers (bench/README.md "Findings": 2-3 ms over 31 days where a
-- COUNT(DISTINCT) over per-day user rows took 300-650 ms); per-value counts feed the
-- breakdowns, hourly views the hour series, a row per site the list of sites. Everything is
-- filled from the raw events here, so an upgraded database answers ranges over its history.

-- Workers of the previous release keep committing batches while this runs (a pre-upgrade
-- hook, a rolling update): held off here, they fail once it commits (their tables are
-- gone) and acknowledge nothing, so their entries go to the new workers. Everything below
-- then reads one unchanging set of events.
LOCK TABLE events, daily_site_stats, daily_site_path_counts, daily_site_users IN EXCLUSIVE MODE;

-- Every user of every site gets a number, from one sequence so that numbering never waits on
-- a lock; the bitmaps below index users by it. A site's users are spread over the numbers in
-- proportion to its share of new users.
CREATE SEQUENCE user_numbers AS bigint MINVALUE 0 START 0;
CREATE TABLE site_users (
    site_id     text   NOT NULL,
    user_id     text   NOT NULL,
    user_number bigint NOT NULL DEFAULT nextval('user_numbers'),
    PRIMARY KEY (site_id, user_id)
);

CREATE TABLE sites (
    site_id     text   PRIMARY KEY,
    first_date  date   NOT NULL,
    last_date   date   NOT NULL,
    total_views bigint NOT NULL
);

CREATE TABLE hourly_site_stats (
    site_id text        NOT NULL,
    hour    timestamptz NOT NULL,
    views   bigint      NOT NULL,
    PRIMARY KEY (site_id, hour)
);

-- Events per value and day: page views per path and per referrer (NULL: none), events of
-- every type per event_type. A value is keyed as (value IS NULL, coalesce(value, '')): a
-- missing referrer is a value of its own, distinct from an empty one, and every lookup by
-- value (the workers' upserts, a breakdown row's bitmaps) is an index lookup.
CREATE TABLE daily_value_counts (
    site_id   text   NOT NULL,
    dimension text   NOT NULL CHECK (dimension IN ('path', 'referrer', 'event_type')),
    date      date   NOT NULL,
    value     text,
    events    bigint NOT NULL
);
CREATE UNIQUE INDEX daily_value_counts_key
    ON daily_value_counts (site_id, dimension, date, (value IS NULL), coalesce(value, ''));

-- The users seen in a bucket: bit (user_number % 1024) of the bucket's row for chunk
-- user_number / 1024. A range's users are the OR of its buckets' rows, chunk by chunk.
CREATE TABLE daily_user_bits (
    site_id text       NOT NULL,
    date    date       NOT NULL,
    chunk   bigint     NOT NULL,
    users   bit(1024)  NOT NULL,
    PRIMARY KEY (site_id, date, chunk)
);
CREATE TABLE hourly_user_bits (
    site_id text        NOT NULL,
    hour    timestamptz NOT NULL,
    chunk   bigint      NOT NULL,
    users   bit(1024)   NOT NULL,
    PRIMARY KEY (site_id, hour, chunk)
);
-- The users of the events each daily_value_counts row counts.
CREATE TABLE daily_value_user_bits (
    site_id   text      NOT NULL,
    dimension text      NOT NULL,
    value     text,
    date      date      NOT NULL,
    chunk     bigint    NOT NULL,
    users     bit(1024) NOT NULL
);
CREATE UNIQUE INDEX daily_value_user_bits_key ON daily_value_user_bits
    (site_id, dimension, (value IS NULL), coalesce(value, ''), date, chunk);

INSERT INTO site_users (site_id, user_id)
SELECT site_id, user_id FROM events GROUP BY site_id, user_id ORDER BY min(occurred_at), 1, 2;

INSERT INTO sites (site_id, first_date, last_date, total_views)
SELECT site_id, min(date), max(date), count(*) FILTER (WHERE event_type = 'page_view')
FROM events GROUP BY site_id;

INSERT INTO hourly_site_stats (site_id, hour, views)
SELECT site_id, date_trunc('hour', occurred_at, 'UTC'),
       count(*) FILTER (WHERE event_type = 'page_view')
FROM events GROUP BY 1, 2;

INSERT INTO daily_value_counts (site_id, dimension, date, value, events)
SELECT site_id, 'path', date, path, count(*) FROM events WHERE event_type = 'page_view'
GROUP BY 1, 3, 4
UNION ALL
SELECT site_id, 'referrer', date, referrer, count(*) FROM events WHERE event_type = 'page_view'
GROUP BY 1, 3, 4
UNION ALL
SELECT site_id, 'event_type', date, event_type, count(*) FROM events GROUP BY 1, 3, 4;

CREATE TEMPORARY TABLE numbered ON COMMIT DROP AS
SELECT e.site_id, e.date, date_trunc('hour', e.occurred_at, 'UTC') AS hour, e.event_type,
       e.path, e.referrer, u.user_number >> 10 AS chunk, (u.user_number & 1023)::int AS bit
FROM events e JOIN site_users u USING (site_id, user_id);

INSERT INTO daily_user_bits (site_id, date, chunk, users)
SELECT site_id, date, chunk, bit_or(B'1'::bit(1024) >> bit) FROM numbered GROUP BY 1, 2, 3;
INSERT INTO hourly_user_bits (site_id, hour, chunk, users)
SELECT site_id, hour, chunk, bit_or(B'1'::bit(1024) >> bit) FROM numbered GROUP BY 1, 2, 3;
INSERT INTO daily_value_user_bits (site_id, dimension, value, date, chunk, users)
SELECT site_id, 'path', path, date, chunk, bit_or(B'1'::bit(1024) >> bit) FROM numbered
WHERE event_type = 'page_view' GROUP BY 1, 3, 4, 5
UNION ALL
SELECT site_id, 'referrer', referrer, date, chunk, bit_or(B'1'::bit(1024) >> bit) FROM numbered
WHERE event_type = 'page_view' GROUP BY 1, 3, 4, 5
UNION ALL
SELECT site_id, 'event_type', event_type, date, chunk, bit_or(B'1'::bit(1024) >> bit) FROM numbered
GROUP BY 1, 3, 4, 5;

-- Replaced: per-day users by the bitmaps, path views by daily_value_counts.
DROP TABLE daily_site_users;
DROP TABLE daily_site_path_counts;
ALTER TABLE daily_site_stats DROP COLUMN unique_users;

-- Raw events are read by site and time (the realtime window, verify's recount of a range);
-- this index serves both, in place of the one by site and date.
DROP INDEX events_site_date;
CREATE INDEX events_site_time ON events (site_id, occurred_at);
