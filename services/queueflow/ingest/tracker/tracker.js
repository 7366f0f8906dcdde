/*
 * QueueFlow's tracker (README "On a web page"). Readable source; ingest serves
 * tracker.min.js, made from this file by `make tracker`.
 *
 * <script defer src="https://INGEST/tracker.js" data-site="example.com"></script>
 *
 * One page_view on load and per history navigation, custom events and identify through
 * window.queueflow (callable before this loads: calls queue up in queueflow.q). Each
 * event carries a fresh event_id (a UUIDv7), so a beacon sent twice counts once. No cookies;
 * the visitor id lives in localStorage. Nothing is sent under Do-Not-Track or Global
 * Privacy Control when the tag says data-respect-dnt.
 */
(function (win, doc) {
  var script = doc.currentScript;
  if (!script) return;
  var attr = function (name) {
    return script.getAttribute("data-" + name);
  };
  var has = function (name) {
    return script.hasAttribute("data-" + name);
  };
  // What ingest accepts: never send an event it would refuse (a 422 a beacon cannot see).
  var clip = function (text, most) {
    return String(text).slice(0, most);
  };

  var site = attr("site");
  var endpoint = attr("endpoint") || new URL(script.src).origin + "/event";
  var nav = navigator;
  var storage;
  var KEY = "queueflow_uid";
  var lastPath;

  var optedOut =
    has("respect-dnt") &&
    (nav.doNotTrack == "1" || win.doNotTrack == "1" || nav.globalPrivacyControl);

  var randomId = function () {
    if (win.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "." + Math.random().toString(36).slice(2);
  };

  // An event's id leads with its time (a UUIDv7, as ingest assigns): the server's dedupe
  // key then grows at its edge instead of being written all over (bench/README.md).
  var eventId = function () {
    var hex = ("00000000000" + Date.now().toString(16)).slice(-12);
    var bytes = win.crypto && crypto.getRandomValues ? crypto.getRandomValues(new Uint8Array(10)) : [];
    for (var i = 0; i < 10; i++) {
      hex += (256 | (bytes[i] || Math.random() * 256)).toString(16).slice(1);
    }
    // 12 digits of milliseconds, 20 random ones: the version (7) and variant (8) set in place.
    return (
      hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-7" + hex.slice(13, 16) + "-8" +
      hex.slice(17, 20) + "-" + hex.slice(20)
    );
  };

  try {
    storage = win.localStorage;
  } catch (e) {}

  var remember = function (id) {
    try {
      storage.setItem(KEY, id);
    } catch (e) {}
    return id;
  };

  var userId = attr("user-id");
  if (userId) userId = clip(userId, 256);
  else {
    try {
      userId = storage.getItem(KEY);
    } catch (e) {}
    userId = userId || remember(randomId());
  }

  var currentPath = function () {
    return clip(location.pathname + (has("hash") ? location.hash : ""), 2048);
  };

  // The landing page's referrer, without its query or fragment, when another origin.
  var referrer;
  try {
    var from = new URL(doc.referrer);
    if (from.origin != location.origin) referrer = clip(from.origin + from.pathname, 2048);
  } catch (e) {}

  // Flat properties only: at most 30, names up to 64, strings up to 512 characters.
  var flat = function (properties) {
    var out = {};
    var count = 0;
    for (var name in properties) {
      var value = properties[name];
      var type = typeof value;
      if (count < 30 && name.length <= 64 && (value === null || /^(string|number|boolean)$/.test(type))) {
        out[name] = type == "string" ? clip(value, 512) : value;
        count++;
      }
    }
    return count ? out : undefined;
  };

  var send = function (type, properties) {
    if (optedOut || !site || !type) return;
    var event = {
      site_id: site,
      event_type: clip(type, 64),
      path: currentPath(),
      user_id: userId,
      event_id: eventId()
    };
    if (referrer) event.referrer = referrer;
    referrer = undefined; // once: the landing page view's
    if (properties && typeof properties == "object") event.properties = flat(properties);
    var body = JSON.stringify(event);
    // text/plain: a "simple" cross-origin request, no preflight needed.
    if (!(nav.sendBeacon && nav.sendBeacon(endpoint, body))) {
      fetch(endpoint, {
        method: "POST",
        body: body,
        keepalive: true,
        headers: { "content-type": "text/plain" }
      }).catch(function () {});
    }
  };

  var pageview = function () {
    lastPath = currentPath();
    send("page_view");
  };

  var navigated = function () {
    if (currentPath() != lastPath) pageview();
  };

  var api = function (command, a, b) {
    if (command == "event") send(a, b);
    else if (command == "identify") userId = remember(clip(a, 256));
    else if (command == "pageview") pageview();
  };

  var history = win.history;
  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      navigated();
      return result;
    };
  });
  win.addEventListener("popstate", navigated);
  if (has("hash")) win.addEventListener("hashchange", navigated);

  var queued = (win.queueflow && win.queueflow.q) || [];
  win.queueflow = function () {
    api.apply(null, arguments);
  };
  // A queued identify applies to the first page view too; everything else follows it.
  var replay = function (identify) {
    for (var i = 0; i < queued.length; i++)
      if ((queued[i][0] == "identify") == identify) api.apply(null, queued[i]);
  };
  replay(true);
  pageview();
  replay(false);
})(window, document);
