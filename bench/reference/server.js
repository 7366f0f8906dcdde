// Reference endpoint of the original's shape: Express parses JSON, checks the fields, XADDs.
const express = require("express");
const { createClient } = require("redis");

const redis = createClient({ url: process.env.REDIS_URL });
const app = express();
app.use(express.json({ limit: "64kb" }));

app.post("/event", async (req, res) => {
  const { site_id, event_type, path, user_id, timestamp } = req.body || {};
  if (!site_id || !event_type || !path || !user_id || !timestamp) {
    return res.status(400).json({ error: "missing fields" });
  }
  try {
    await redis.xAdd(process.env.STREAM || "events_reference", "*", { event: JSON.stringify(req.body) });
    res.status(202).json({ status: "accepted" });
  } catch (err) {
    res.status(503).json({ error: "queue unavailable" });
  }
});

redis.connect().then(() => app.listen(Number(process.env.PORT || 3000), "127.0.0.1"));
