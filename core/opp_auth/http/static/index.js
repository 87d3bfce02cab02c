// Home: finish a login redirect, or send strangers to onboarding or the login page.
import { accessToken, clearTokens, exchangeCode, getJSON, loadTokens, loginUrl, postForm, el } from "/static/api.js";

const content = document.getElementById("content");

async function main() {
  const params = new URLSearchParams(location.search);
  if (params.has("auth_callback") && params.has("code")) {
    try { await exchangeCode(params.get("code")); } catch (err) { content.replaceChildren(el("p", { class: "error" }, err.message)); return; }
    history.replaceState(null, "", params.get("state") || "/");
  }
  const onboarding = await getJSON("/api/onboarding");
  const userStep = (onboarding.body || []).find((step) => step.step === "user");
  if (userStep && !userStep.done) { location.assign("/onboarding.html"); return; }
  const token = await accessToken();
  if (!token) { location.assign(loginUrl()); return; }
  const api = await getJSON("/api/", { headers: { Authorization: `Bearer ${token}` } });
  if (!api.ok) { clearTokens(); location.assign(loginUrl()); return; }
  content.replaceChildren(
    el("p", { id: "status" }, "You are logged in."),
    el("button", { type: "button", id: "logout", onclick: logout }, "Log out"),
  );
}

async function logout() {
  const tokens = loadTokens();
  if (tokens) await postForm("/auth/token", { action: "revoke", token: tokens.refresh_token });
  clearTokens();
  location.assign(loginUrl());
}

main();
