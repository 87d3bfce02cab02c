// Drives opp-auth with Home Assistant's own websocket client, as its web and
// mobile clients use it. Input: one JSON object on stdin ({hassUrl, clientId,
// access_token, refresh_token, expires_in}). Output: one JSON object on
// stdout with what each step saw; tests/homeassistant/test_js_websocket.py
// checks it. Any unexpected failure exits non-zero with the error on stderr.
import WebSocket from "ws";
import {
  Auth,
  createConnection,
  createLongLivedTokenAuth,
  getUser,
  ERR_INVALID_AUTH,
} from "home-assistant-js-websocket";

// The library expects the browser's WebSocket; Node 20 has fetch and FormData but not WebSocket.
globalThis.WebSocket = WebSocket;

const readStdin = async () => {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
};

const input = await readStdin();
const out = {};

// 1. An expired access token is refreshed through POST /auth/token (refresh_token grant).
const saved = [];
const auth = new Auth(
  {
    hassUrl: input.hassUrl,
    clientId: input.clientId,
    expires: Date.now() - 1000,
    refresh_token: input.refresh_token,
    access_token: input.access_token,
    expires_in: input.expires_in,
  },
  (data) => saved.push(data),
);
out.expired_before = auth.expired;
await auth.refreshAccessToken();
// (Within the second of the login the new JWT can equal the old one: same claims, same key.)
out.refreshed = !auth.expired && typeof auth.accessToken === "string" && auth.accessToken.length > 0;
out.saved_tokens = saved.length;

// 2. The websocket: auth phase, then commands.
const conn = await createConnection({ auth });
out.ha_version = conn.haVersion;
out.supported_features = await conn.sendMessagePromise({
  type: "supported_features",
  features: { coalesce_messages: 1 },
});
const user = await getUser(conn);
out.user = { id: user.id, name: user.name, is_owner: user.is_owner, is_admin: user.is_admin };
await conn.ping();
out.ping = true;
const tokens = await conn.sendMessagePromise({ type: "auth/refresh_tokens" });
out.refresh_tokens = tokens.map((t) => ({ type: t.type, is_current: t.is_current, auth_provider_type: t.auth_provider_type }));
try {
  await conn.sendMessagePromise({ type: "no/such_command" });
  out.unknown_command = "succeeded";
} catch (err) {
  out.unknown_command = err.code;
}

// 3. A long-lived access token, used the way scripts and integrations use one.
const longLived = await conn.sendMessagePromise({
  type: "auth/long_lived_access_token",
  client_name: "home-assistant-js-websocket test",
  lifespan: 1,
});
const llConn = await createConnection({ auth: createLongLivedTokenAuth(input.hassUrl, longLived) });
out.long_lived_user = (await getUser(llConn)).id;
llConn.close();

// 4. Logout: auth.revoke() posts a multipart form to /auth/revoke; the session is over.
conn.close();
await auth.revoke();
out.saved_after_revoke = saved[saved.length - 1];
const again = new Auth({
  hassUrl: input.hassUrl,
  clientId: input.clientId,
  expires: Date.now() - 1000,
  refresh_token: input.refresh_token,
  access_token: input.access_token,
  expires_in: input.expires_in,
});
try {
  await again.refreshAccessToken();
  out.refresh_after_revoke = "succeeded";
} catch (err) {
  out.refresh_after_revoke = err === ERR_INVALID_AUTH ? "ERR_INVALID_AUTH" : String(err);
}
try {
  const dead = await createConnection({ auth: createLongLivedTokenAuth(input.hassUrl, auth.data.access_token) });
  dead.close();
  out.access_after_revoke = "connected";
} catch (err) {
  out.access_after_revoke = err === ERR_INVALID_AUTH ? "ERR_INVALID_AUTH" : String(err);
}

process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
