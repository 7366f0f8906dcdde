-- migrate:up
-- Raw events, one row per accepted event_id: the source of truth `queueflow verify` recomputes from.
CREATE TABLE events (
    event_id    text        PRIMARY KEY,
    site_id     text        NOT NULL,
    event_type  text        NOT NULL,
    path        text        NOT NULL,
    user_id     text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- An event's day is the UTC date of its timestamp.
    date        date        GENERATED ALWAYS AS ((occurred_at AT TIME ZONE 'UTC')::date) STORED,
    received_at timestamptz NOT NULL,
    referrer    text,
    properties  jsonb
);
CREATE INDEX events_site_date ON events (site_id, date);
