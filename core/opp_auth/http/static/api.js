// Small helpers shared by the pages: JSON calls and the tokens kept in localStorage.
export const clientId = `${location.origin}/`;
const TOKENS = "opp_auth_tokens";

export async function getJSON(url, options = {}) {
  const response = await fetch(url, options);
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

export function loginUrl() {
  const params = new URLSearchParams({ response_type: "code", client_id: clientId, redirect_uri: `${location.origin}/?auth_callback=1`, state: location.pathname });
  return `/auth/authorize?${params}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) node.append(child);
  return node;
}
