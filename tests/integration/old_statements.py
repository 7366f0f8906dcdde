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
