-- migrate:up
-- Daily aggregates that GET /stats reads; workers fold newly inserted events into them.
CREATE TABLE daily_site_stats (
    site_id      text   NOT NULL,
    date         date   NOT NULL,
    total_views  bigint NOT NULL DEFAULT 0,
    unique_users bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date)
);

CREATE TABLE daily_site_path_counts (
    site_id text   NOT NULL,
    date    date   NOT NULL,
    path    text   NOT NULL,
    views   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, date, path)
);

-- The exact set of users seen per site and day: a row is new exactly once, which is what
-- makes unique_users exact under concurrent workers without a COUNT(DISTINCT) per read.
CREATE TABLE daily_site_users (
    site_id text NOT NULL,
    date    date NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (site_id, date, user_id)
);
