// Helpers shared by the pages: JSON calls, the tokens kept in localStorage, the websocket API.
export const clientId = `${location.origin}/`;
export const redirectUri = `${location.origin}/?auth_callback=1`;
const TOKENS = "opp_auth_tokens";

export async function getJSON(url, options = {}) {
  let response;
  try { response = await fetch(url, options); } catch (err) { return { status: 0, ok: false, body: null }; }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  return { status: response.status, ok: response.ok, body };
}

export function postJSON(url, data, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  return getJSON(url, { method: "POST", headers, body: JSON.stringify(data) });
}

export function postForm(url, data) {
  return getJSON(url, { method: "POST", body: new URLSearchParams(data) });
}

export function loadTokens() {
  try { return JSON.parse(localStorage.getItem(TOKENS)); } catch (err) { return null; }
}

export function saveTokens(tokens) {
  tokens.expires = Date.now() + tokens.expires_in * 1000;
  localStorage.setItem(TOKENS, JSON.stringify(tokens));
}

export function clearTokens() { localStorage.removeItem(TOKENS); }

export async function exchangeCode(code) {
  const result = await postForm("/auth/token", { grant_type: "authorization_code", client_id: clientId, code });
  if (!result.ok) throw new Error(result.body && result.body.error_description || "Login failed");
  saveTokens(result.body);
  return result.body;
}

export async function accessToken() {
  const tokens = loadTokens();
  if (!tokens) return null;
  if (tokens.expires - Date.now() > 30000) return tokens.access_token;
  const result = await postForm("/auth/token", { grant_type: "refresh_token", client_id: clientId, refresh_token: tokens.refresh_token });
  if (!result.ok) { clearTokens(); return null; }
  saveTokens({ ...tokens, ...result.body });
  return result.body.access_token;
}

export async function logout(conn = null) {
  // Our own revocation closes the socket: that is not a lost connection.
  if (conn) conn.close();
  const tokens = loadTokens();
  if (tokens) await postForm("/auth/token", { action: "revoke", token: tokens.refresh_token });
  clearTokens();
  location.assign(loginUrl("/"));
}

export function loginUrl(state = location.pathname) {
  const params = new URLSearchParams({ response_type: "code", client_id: clientId, redirect_uri: redirectUri, state });
  return `/auth/authorize?${params}`;
}

export class CommandError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

// The websocket API (/api/websocket), the same one every other client uses.
export class Connection {
  static open(token) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/websocket`);
      const conn = new Connection(ws);
      ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.type === "auth_required") ws.send(JSON.stringify({ type: "auth", access_token: token }));
        else if (msg.type === "auth_ok") { ws.onmessage = (ev) => conn._receive(JSON.parse(ev.data)); resolve(conn); }
        else if (msg.type === "auth_invalid") { reject(new CommandError("auth_invalid", msg.message)); ws.close(); }
      };
      ws.onerror = () => reject(new CommandError("connection_lost", "Connection failed"));
      ws.onclose = () => conn._closed();
    });
  }

  constructor(ws) { this.ws = ws; this.nextId = 1; this.pending = new Map(); this.onclose = null; }

  call(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (this.ws.readyState !== WebSocket.OPEN) { reject(new CommandError("connection_lost", "Connection lost")); return; }
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...message, id }));
    });
  }

  _receive(msg) {
    const waiter = this.pending.get(msg.id);
    if (!waiter || msg.type !== "result") return;
    this.pending.delete(msg.id);
    if (msg.success) waiter.resolve(msg.result);
    else waiter.reject(new CommandError(msg.error.code, msg.error.message));
  }

  _closed() {
    for (const waiter of this.pending.values()) waiter.reject(new CommandError("connection_lost", "Connection lost"));
    this.pending.clear();
    if (this.onclose) this.onclose();
  }

  close() { this.onclose = null; this.ws.close(); }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  let selected;
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "value" && (value === undefined || value === null)) continue;
    else if (key === "value" && tag === "select") selected = value;
    else if (key === "value" && (tag === "input" || tag === "textarea")) node.value = value;
    else if (key === "checked") node.checked = Boolean(value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  if (selected !== undefined) node.value = selected;
  return node;
}
