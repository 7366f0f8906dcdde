"""The worker's batch statement as earlier schemas took it, to fill a database the way a
deployment of that time did before a migration test upgrades it."""

# Migrations 0002-0003: daily_site_users and daily_site_path_counts, unique_users per day.
SAVE_BATCH_BEFORE_0004 = """
WITH batch AS (
    SELECT event_id, site_id, event_type, path, user_id, "timestamp" AS occurred_at,
           'epoch'::timestamptz + received_ms * interval '1 millisecond' AS received_at,
           referrer, properties
    FROM json_to_recordset($1::json) AS b(
        event_id text, site_id text, event_type text, path text, user_id text,
        "timestamp" timestamptz, received_ms bigint, referrer text, properties jsonb)
),
inserted AS (
    INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at,
                        received_at, referrer, properties)
    SELECT event_id, site_id, event_type, path, user_id, occurred_at, received_at,
           referrer, properties
    FROM batch ORDER BY site_id, event_id
    ON CONFLICT (site_id, event_id) DO NOTHING
    RETURNING site_id, date, event_type, path, user_id
),
new_users AS (
    INSERT INTO daily_site_users (site_id, date, user_id)
    SELECT DISTINCT site_id, date, user_id FROM inserted ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING site_id, date
),
path_views AS (
    INSERT INTO daily_site_path_counts AS c (site_id, date, path, views)
    SELECT site_id, date, path, count(*) FROM inserted WHERE event_type = 'page_view'
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, path) DO UPDATE SET views = c.views + excluded.views
),
day_totals AS (
    SELECT site_id, date, sum(views) AS views, sum(users) AS users FROM (
        SELECT site_id, date, count(*) FILTER (WHERE event_type = 'page_view') AS views,
               0 AS users
        FROM inserted GROUP BY 1, 2
        UNION ALL
        SELECT site_id, date, 0, count(*) FROM new_users GROUP BY 1, 2
    ) t GROUP BY 1, 2
),
day_stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views, unique_users)
    SELECT site_id, date, views, users FROM day_totals ORDER BY 1, 2
    ON CONFLICT (site_id, date) DO UPDATE
        SET total_views = s.total_views + excluded.total_views,
            unique_users = s.unique_users + excluded.unique_users
)
SELECT count(*) FROM inserted
"""


# Migration 0004: unpartitioned events, deduplicated by their own key (site_id, event_id).
SAVE_BATCH_BEFORE_0005 = """
WITH batch AS (
    SELECT event_id, site_id, event_type, path, user_id, "timestamp" AS occurred_at,
           'epoch'::timestamptz + received_ms * interval '1 millisecond' AS received_at,
           referrer, properties
    FROM json_to_recordset($1::json) AS b(
        event_id text, site_id text, event_type text, path text, user_id text,
        "timestamp" timestamptz, received_ms bigint, referrer text, properties jsonb)
),
inserted AS (
    INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at,
                        received_at, referrer, properties)
    SELECT event_id, site_id, event_type, path, user_id, occurred_at, received_at,
           referrer, properties
    FROM batch ORDER BY site_id, event_id
    ON CONFLICT (site_id, event_id) DO NOTHING
    RETURNING site_id, date, date_trunc('hour', occurred_at, 'UTC') AS hour, event_type, path,
              referrer, user_id, event_type = 'page_view' AS viewed
),
users AS (SELECT DISTINCT site_id, user_id FROM inserted),
known AS (SELECT u.* FROM site_users u JOIN users USING (site_id, user_id)),
-- A user that another worker numbers at the same moment conflicts: DO UPDATE waits for that
-- commit and returns the number it gave (DO NOTHING would return no row).
new_users AS (
    INSERT INTO site_users AS u (site_id, user_id)
    SELECT site_id, user_id FROM users LEFT JOIN known k USING (site_id, user_id)
    WHERE k.user_number IS NULL
    ORDER BY 1, 2
    ON CONFLICT (site_id, user_id) DO UPDATE SET user_number = u.user_number
    RETURNING site_id, user_id, user_number
),
numbered AS (
    SELECT i.*, n.user_number >> 10 AS chunk,
           B'1'::bit(1024) >> (n.user_number & 1023)::int AS bit
    FROM inserted i
    JOIN (SELECT * FROM known UNION ALL SELECT * FROM new_users) n USING (site_id, user_id)
),
day_stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views)
    SELECT site_id, date, count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (site_id, date) DO UPDATE SET total_views = s.total_views + excluded.total_views
),
hour_stats AS (
    INSERT INTO hourly_site_stats AS s (site_id, hour, views)
    SELECT site_id, hour, count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (site_id, hour) DO UPDATE SET views = s.views + excluded.views
),
site_stats AS (
    INSERT INTO sites AS s (site_id, first_date, last_date, total_views)
    SELECT site_id, min(date), max(date), count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1 ORDER BY 1
    ON CONFLICT (site_id) DO UPDATE
        SET first_date = least(s.first_date, excluded.first_date),
            last_date = greatest(s.last_date, excluded.last_date),
            total_views = s.total_views + excluded.total_views
),
value_counts AS (
    INSERT INTO daily_value_counts AS c (site_id, dimension, date, value, events)
    SELECT site_id, dimension, date, value, count(*) FROM (
        SELECT site_id, 'path' AS dimension, date, path AS value FROM inserted WHERE viewed
        UNION ALL SELECT site_id, 'referrer', date, referrer FROM inserted WHERE viewed
        UNION ALL SELECT site_id, 'event_type', date, event_type FROM inserted
    ) v GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (site_id, dimension, date, (value IS NULL), coalesce(value, ''))
        DO UPDATE SET events = c.events + excluded.events
),
day_users AS (
    INSERT INTO daily_user_bits AS b (site_id, date, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, date, chunk, bit_or(bit) AS users FROM numbered GROUP BY 1, 2, 3
    ) n LEFT JOIN daily_user_bits o USING (site_id, date, chunk)
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, chunk) DO UPDATE SET users = b.users | excluded.users
),
hour_users AS (
    INSERT INTO hourly_user_bits AS b (site_id, hour, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, hour, chunk, bit_or(bit) AS users FROM numbered GROUP BY 1, 2, 3
    ) n LEFT JOIN hourly_user_bits o USING (site_id, hour, chunk)
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, hour, chunk) DO UPDATE SET users = b.users | excluded.users
),
value_users AS (
    INSERT INTO daily_value_user_bits AS b (site_id, dimension, value, date, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, dimension, value, date, chunk, bit_or(bit) AS users FROM (
            SELECT site_id, 'path' AS dimension, path AS value, date, chunk, bit
            FROM numbered WHERE viewed
            UNION ALL
            SELECT site_id, 'referrer', referrer, date, chunk, bit FROM numbered WHERE viewed
            UNION ALL
            SELECT site_id, 'event_type', event_type, date, chunk, bit FROM numbered
        ) v GROUP BY 1, 2, 3, 4, 5
    ) n LEFT JOIN daily_value_user_bits o
        ON o.site_id = n.site_id AND o.dimension = n.dimension
       AND (o.value IS NULL) = (n.value IS NULL) AND coalesce(o.value, '') = coalesce(n.value, '')
       AND o.date = n.date AND o.chunk = n.chunk
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (site_id, dimension, (value IS NULL), coalesce(value, ''), date, chunk)
        DO UPDATE SET users = b.users | excluded.users
)
SELECT count(*) FROM inserted
"""
