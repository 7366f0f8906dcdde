// QueueFlow's dashboard: reads reporting's own API (same origin, relative URLs) and draws it.
// No dependencies and no build step. The URL holds the state (?site=&range= or &from=&to=);
// a token, when reporting needs one, lives in sessionStorage only.
"use strict";

(function () {
  const TOKEN_KEY = "queueflow_token";
  const REFRESH_MS = 5000;
  const numbers = new Intl.NumberFormat();
  const $ = (id) => document.getElementById(id);
  let realtimeTimer = null;
  let current = null; // {site, from, to}

  function utcDay(date) {
    return date.toISOString().slice(0, 10);
  }

  function daysBefore(day, n) {
    const d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() - n);
    return utcDay(d);
  }

  function spanDays(from, to) {
    return Math.round((Date.parse(to) - Date.parse(from)) / 86400000) + 1;
  }

  // The range the URL asks for: range=today|7d|30d, or from/to (default: 7 days).
  function wanted() {
    const q = new URLSearchParams(location.search);
    const today = utcDay(new Date());
    const range = q.get("range") || (q.get("from") ? "custom" : "7d");
    let from = today;
    let to = today;
    if (range === "7d") from = daysBefore(today, 6);
    if (range === "30d") from = daysBefore(today, 29);
    if (range === "custom") {
      to = q.get("to") || today;
      from = q.get("from") || to;
    }
    return { site: q.get("site") || "", range, from, to };
  }

  function urlFor(state) {
    const q = new URLSearchParams();
    if (state.site) q.set("site", state.site);
    if (state.range === "custom") {
      q.set("from", state.from);
      q.set("to", state.to);
    } else {
      q.set("range", state.range);
    }
    return location.pathname + "?" + q.toString();
  }

  function show(state) {
    history.pushState(null, "", urlFor(state));
    load();
  }

  class Unauthorized extends Error {}
  class Refused extends Error {
    constructor(status, message) {
      super(status + " " + message);
      this.status = status;
    }
  }

  async function api(route, params, csv) {
    const url = new URL(route.replace(/^\//, ""), document.baseURI);
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    const headers = { Accept: csv ? "text/csv" : "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(url, { headers, credentials: "omit", cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (e) {
        /* not JSON */
      }
      throw new Refused(response.status, detail);
    }
    return csv ? response.blob() : response.json();
  }

  function setText(id, value) {
    $(id).textContent = value;
  }

  function fmt(n) {
    return n === null || n === undefined ? "–" : numbers.format(n);
  }

  function count(n, one, many) {
    return fmt(n) + " " + (n === 1 ? one : many);
  }

  function freshness(answer) {
    const line = $("freshness");
    line.classList.toggle("incomplete", !answer.complete);
    if (!answer.as_of) {
      line.textContent = "Freshness unknown: the queue cannot be read right now.";
      return;
    }
    const asOf = new Date(answer.as_of);
    const time = asOf.toISOString().slice(11, 19);
    const day = asOf.toISOString().slice(0, 10);
    const queued = count(answer.lag_entries, "event", "events");
    line.textContent =
      "Counted up to " + time + " UTC (" + day + "), " + queued + " still in the queue" +
      (answer.complete ? "; this range is complete." : "; this range is still filling.");
  }

  function fillTable(section, rows) {
    const body = section.querySelector("tbody");
    body.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = row.value === null ? "(none)" : row.value;
      if (row.value === null) name.className = "none";
      const events = document.createElement("td");
      events.textContent = fmt(row.events);
      const users = document.createElement("td");
      users.textContent = fmt(row.unique_users);
      tr.append(name, events, users);
      body.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 3;
      td.textContent = "Nothing in this range.";
      tr.append(td);
      body.append(tr);
    }
  }

  const SVG = "http://www.w3.org/2000/svg";

  function svg(name, attrs, parent) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (parent) parent.append(el);
    return el;
  }

  // Two lines over the points, drawn as inline SVG; each point has a title for its figures.
  function chart(points, hourly) {
    const box = $("chart");
    const width = Math.max(300, Math.round(box.clientWidth || 800));
    const height = 240;
    const pad = { left: 48, right: 12, top: 12, bottom: 28 };
    const top = Math.max(1, ...points.map((p) => Math.max(p.views, p.unique_users)));
    const x = (i) =>
      pad.left + (points.length < 2 ? 0 : (i * (width - pad.left - pad.right)) / (points.length - 1));
    const y = (v) => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height });
    for (const frac of [0, 0.5, 1]) {
      svg("line", { x1: pad.left, x2: width - pad.right, y1: y(top * frac), y2: y(top * frac), class: "grid" }, root);
      const label = svg("text", { x: pad.left - 6, y: y(top * frac) + 4, class: "axis", "text-anchor": "end" }, root);
      label.textContent = numbers.format(Math.round(top * frac));
    }
    for (const [key, cls] of [["views", "views"], ["unique_users", "users"]]) {
      const d = points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[key]).toFixed(1)).join(" ");
      svg("path", { d, class: "line " + cls }, root);
    }
    // Axis labels: days at midnight for long hour series, else about eight evenly spaced.
    const midnights = hourly && points.length > 48;
    const every = Math.max(1, Math.ceil(points.length / 8));
    points.forEach((p, i) => {
      const when = hourly ? p.start.slice(5, 16).replace("T", " ") : p.start.slice(0, 10);
      if (points.length <= 62) {
        const dot = svg("circle", { cx: x(i), cy: y(p.views), r: 3, class: "dot views" }, root);
        svg("title", {}, dot).textContent =
          when + ": " + count(p.views, "view", "views") + ", " + count(p.unique_users, "user", "users");
      }
      const labelled = midnights ? p.start.slice(11, 13) === "00" : i % every === 0;
      if (labelled) {
        const label = svg("text", { x: x(i), y: height - 8, class: "axis", "text-anchor": "middle" }, root);
        label.textContent = hourly && !midnights ? p.start.slice(11, 16) : p.start.slice(5, 10);
      }
    });
    box.replaceChildren(root);
  }

  // The chart's figures as a table, for screen readers (the chart itself is hidden from them).
  function seriesTable(points, hourly) {
    const body = $("series-rows");
    body.replaceChildren();
    for (const p of points) {
      const tr = document.createElement("tr");
      for (const text of [hourly ? p.start.slice(0, 16).replace("T", " ") : p.start.slice(0, 10), fmt(p.views), fmt(p.unique_users)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      body.append(tr);
    }
  }

  async function download(button) {
    if (!current) return;
    const by = button.dataset.by;
    const route = button.dataset.route || "/stats/breakdown";
    const params = { site_id: current.site };
    if (by) Object.assign(params, { from: current.from, to: current.to, by, limit: "1000" });
    else params.date = current.to;
    try {
      const blob = await api(route, params, true);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = [current.site, by || "ingest", current.from, current.to].join("_") + ".csv";
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      problem(error);
    }
  }

  function problem(error) {
    if (error instanceof Unauthorized) {
      askToken(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused. Try another." : null);
      return;
    }
    const box = $("problem");
    box.hidden = false;
    box.textContent = "Could not load: " + error.message;
  }

  function askToken(why) {
    $("login").hidden = false;
    if (why) setText("login-why", why);
    $("token").focus();
  }

  async function sites() {
    const answer = await api("/sites");
    const select = $("site");
    select.replaceChildren();
    for (const s of answer.sites) {
      const option = document.createElement("option");
      option.value = s.site_id;
      option.textContent = s.site_id;
      select.append(option);
    }
    return answer.sites;
  }

  // The snippets quote the site id for where it goes: an HTML attribute, JSON in a shell
  // string. An id from the URL is the reader's own, but may hold anything.
  function htmlAttribute(text) {
    return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function shellQuoted(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function snippets(site) {
    setText(
      "snippet-tag",
      '<script defer src="https://INGEST_HOST/tracker.js" data-site="' + htmlAttribute(site) + '"></script>'
    );
    const event = { site_id: site, event_type: "page_view", path: "/", user_id: "u1" };
    setText(
      "snippet-curl",
      "curl -X POST https://INGEST_HOST/event -H 'Content-Type: application/json' \\\n  -d " +
        shellQuoted(JSON.stringify(event))
    );
  }

  const REASONS = { bot: "Dropped as bots", validation: "Rejected as invalid" };

  // Accepted, then a row per reason ingest dropped or rejected events for.
  function ingestRows(ingest) {
    const body = $("ingest");
    body.replaceChildren();
    const rows = ingest
      ? [["Accepted", ingest.accepted]]
          .concat(Object.entries(ingest.dropped).map(([k, n]) => [REASONS[k] || "Dropped: " + k, n]))
          .concat(Object.entries(ingest.rejected).map(([k, n]) => [REASONS[k] || "Rejected: " + k, n]))
      : [["Accepted", "unavailable"]];
    for (const [label, n] of rows) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = label;
      const td = document.createElement("td");
      td.textContent = typeof n === "number" ? fmt(n) : n;
      tr.append(th, td);
      body.append(tr);
    }
  }

  // Whether the token may read a site that has no events yet (403 says it may not).
  async function covers(site) {
    try {
      await api("/stats/realtime", { site_id: site, minutes: "1" });
      return true;
    } catch (error) {
      if (error instanceof Refused && (error.status === 403 || error.status === 422)) return false;
      throw error;
    }
  }

  async function realtime() {
    if (!current || document.hidden) return;
    try {
      const answer = await api("/stats/realtime", { site_id: current.site, minutes: "5" });
      setText("realtime", count(answer.views, "view", "views"));
      setText("realtime-users", count(answer.unique_users, "user", "users"));
    } catch (error) {
      problem(error);
    }
  }

  let loads = 0;

  function reset() {
    for (const id of ["views", "users", "realtime"]) setText(id, "–");
    setText("realtime-users", "");
  }

  async function load() {
    const mine = ++loads; // a newer load makes this one's answers stale
    clearInterval(realtimeTimer);
    current = null;
    reset();
    $("problem").hidden = true;
    const state = wanted();
    if (state.from > state.to) {
      problem(new Error("the range starts after it ends"));
      return;
    }
    let known;
    try {
      known = await sites();
    } catch (error) {
      problem(error);
      return;
    }
    if (mine !== loads) return;
    const signedIn = !$("login").hidden;
    $("login").hidden = true;
    if (signedIn) $("site").focus();
    // A site the token does not cover (or none asked for): the first one it does.
    let allowed = known.some((s) => s.site_id === state.site);
    try {
      if (state.site && !allowed) allowed = await covers(state.site);
    } catch (error) {
      problem(error);
      return;
    }
    if (!allowed) {
      if (state.site && known.length) {
        $("problem").hidden = false;
        $("problem").textContent = "This token does not cover " + state.site + ".";
      }
      state.site = known.length ? known[0].site_id : "";
      if (state.site) history.replaceState(null, "", urlFor(state));
    }
    if (!state.site) {
      setText("freshness", "No site has events yet.");
      $("empty").hidden = false;
      snippets("example.com");
      return;
    }
    if (!known.some((s) => s.site_id === state.site)) {
      const option = document.createElement("option"); // a covered site without events yet
      option.value = option.textContent = state.site;
      $("site").append(option);
    }
    $("site").value = state.site;
    $("from").value = state.from;
    $("to").value = state.to;
    for (const b of document.querySelectorAll("#ranges button[data-range]")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === state.range));
    }
    current = state;
    const range = { site_id: state.site, from: state.from, to: state.to };
    const hourly = spanDays(state.from, state.to) <= 7;
    setText("interval", hourly ? "(per hour, UTC)" : "(per day, UTC)");
    setText("ingest-day", state.to);
    try {
      const [totals, series, paths, referrers, types, ingest] = await Promise.all([
        api("/stats", range),
        api("/stats/timeseries", { ...range, interval: hourly ? "hour" : "day" }),
        api("/stats/breakdown", { ...range, by: "path" }),
        api("/stats/breakdown", { ...range, by: "referrer" }),
        api("/stats/breakdown", { ...range, by: "event_type" }),
        api("/stats/ingest", { site_id: state.site, date: state.to }).catch(() => null),
      ]);
      if (mine !== loads) return;
      freshness(totals);
      setText("views", fmt(totals.total_views));
      setText("users", fmt(totals.unique_users));
      chart(series.points, hourly);
      seriesTable(series.points, hourly);
      fillTable(document.querySelector('[data-by="path"]'), paths.rows);
      fillTable(document.querySelector('[data-by="referrer"]'), referrers.rows);
      fillTable(document.querySelector('[data-by="event_type"]'), types.rows);
      ingestRows(ingest);
      const site = known.find((s) => s.site_id === state.site);
      $("empty").hidden = Boolean(site && site.total_views) || totals.unique_users > 0;
      snippets(state.site);
    } catch (error) {
      problem(error);
      return;
    }
    realtime();
    realtimeTimer = setInterval(realtime, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      load();
    });
    $("site").addEventListener("change", () => show({ ...wanted(), site: $("site").value }));
    for (const b of document.querySelectorAll("#ranges button[data-range]")) {
      b.addEventListener("click", () => show({ ...wanted(), range: b.dataset.range }));
    }
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      show({ site: $("site").value, range: "custom", from: $("from").value, to: $("to").value });
    });
    for (const b of document.querySelectorAll("button.csv")) {
      b.addEventListener("click", () => download(b));
    }
    window.addEventListener("popstate", load);
    load();
  });
})();
