// Bun (uWebSockets' pub/sub in C++ behind a JS handler) doing every benchmark scenario.
//
//     bun bench/peers/bun_peer.js --port PORT [--jwt-secret S]
//
// The protocol of common.py: server_ready on open, subscription_update acked,
// bench.publish / bench.users published with server.publish(topic, frame) (one frame shared by
// the topic's subscribers, serialised once), count / bench.stats / echo in the message handler.
// JWT (HS256, `exp` required) from `Authorization: Bearer` or the access_token cookie, checked
// in fetch() before the upgrade.
import { createHmac, timingSafeEqual } from "node:crypto";

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const host = opt("--host", "127.0.0.1");
const port = Number(opt("--port", "0"));
const secret = opt("--jwt-secret", null);

const b64url = (buf) => Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");

function verify(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const want = b64url(createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest());
  const a = Buffer.from(want), b = Buffer.from(parts[2]);
  if (a.length !== b.length || !timingSafeEqual(a, b)) return null;
  let claims;
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    if (header.alg !== "HS256") return null;
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    return null;
  }
  if (typeof claims.exp !== "number" || claims.exp < Date.now() / 1000) return null;
  return String(claims.sub ?? "");
}

function tokenFrom(req) {
  const auth = req.headers.get("authorization");
  if (auth && auth.slice(0, 7).toLowerCase() === "bearer ") return auth.slice(7).trim();
  const cookie = req.headers.get("cookie") || "";
  for (const kv of cookie.split(";")) {
    const [k, ...v] = kv.trim().split("=");
    if (k === "access_token") return v.join("=");
  }
  return null;
}

const pad = (size) => "x".repeat(Math.max(0, size - '{"s":12345,"d":""}'.length));

// The frame of publication s, padded to exactly frameBytes when asked (the same-bytes variant).
function tick(topic, s, size, frameBytes) {
  const make = (d) => JSON.stringify({ c: "U", t: "tick", seq: s + 1, tp: topic, p: { s, d } });
  if (!frameBytes) return make(pad(size));
  return make("x".repeat(Math.max(0, frameBytes - make("").length)));
}

let received = 0;
const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, srv) {
    let user = "";
    if (secret) {
      const tok = tokenFrom(req);
      user = tok ? verify(tok) : null;
      if (user === null) return new Response("unauthorized", { status: 401 });
    }
    if (srv.upgrade(req, { data: { user } })) return undefined;
    return new Response("websocket only", { status: 400 });
  },
  websocket: {
    idleTimeout: 0,
    maxPayloadLength: 16 * 1024 * 1024,
    backpressureLimit: 64 * 1024 * 1024,
    open(ws) {
      ws.send(JSON.stringify({ c: "WSE", t: "server_ready", p: { user_id: ws.data.user } }));
    },
    message(ws, data) {
      let m;
      try {
        m = JSON.parse(data);
      } catch {
        return;
      }
      if (m === null || typeof m !== "object") return;
      const t = m.t || m.type || "";
      const p = m.p || m.payload || {};
      if (t === "count") {
        received++;
      } else if (t === "echo") {
        ws.send(JSON.stringify({ c: "U", t: "echo", p }));
      } else if (t === "subscription_update") {
        const topics = (p.topics || []).map(String);
        const action = p.action || "subscribe";
        for (const tp of topics) action === "unsubscribe" ? ws.unsubscribe(tp) : ws.subscribe(tp);
        ws.send(JSON.stringify({ c: "WSE", t: "subscription_update",
          p: { action, success: true, success_topics: topics, failed_topics: [] } }));
      } else if (t === "bench.publish") {
        const topic = String(p.topic ?? "bench");
        const count = Number(p.count ?? 1000);
        const start = Number(p.start ?? 0);
        const size = Number(p.size ?? 60);
        const fb = Number(p.frame_bytes ?? 0);
        for (let s = start; s < start + count; s++) server.publish(topic, tick(topic, s, size, fb));
        ws.send(JSON.stringify({ c: "U", t: "bench.done", p: { published: count } }));
      } else if (t === "bench.users") {
        const prefix = String(p.prefix ?? "u.");
        const users = Number(p.users ?? 0);
        const count = Number(p.count ?? 1);
        const size = Number(p.size ?? 60);
        const fb = Number(p.frame_bytes ?? 0);
        for (let s = 0; s < count; s++) {
          for (let u = 0; u < users; u++) {
            const tp = prefix + u;
            server.publish(tp, tick(tp, s, size, fb));
          }
        }
        ws.send(JSON.stringify({ c: "U", t: "bench.done", p: { published: count * users } }));
      } else if (t === "bench.stats") {
        ws.send(JSON.stringify({ c: "U", t: "bench.stats", p: { received } }));
      }
    },
  },
});

console.log(`bun: serving ws://${host}:${server.port}/wse pid ${process.pid} bun ${Bun.version}`);
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => { server.stop(true); process.exit(0); });
