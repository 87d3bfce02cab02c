// Onboarding: create the owner, sign in, finish the remaining steps, go home.
import { clientId, exchangeCode, getJSON, postJSON } from "/static/api.js";

const form = document.getElementById("form");
const errorBox = document.getElementById("error");

async function finishSteps(accessToken) {
  const status = await getJSON("/api/onboarding");
  const done = new Set((status.body || []).filter((step) => step.done).map((step) => step.step));
  if (!done.has("core_config")) await postJSON("/api/onboarding/core_config", {}, accessToken);
  if (!done.has("analytics")) await postJSON("/api/onboarding/analytics", {}, accessToken);
  if (!done.has("integration")) await postJSON("/api/onboarding/integration", { client_id: clientId, redirect_uri: `${location.origin}/?auth_callback=1` }, accessToken);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const data = Object.fromEntries(new FormData(form));
  if (!data.name || !data.username || !data.password) { errorBox.textContent = "Fill in every field."; return; }
  if (data.password !== data.password_confirm) { errorBox.textContent = "Passwords don't match"; return; }
  const result = await postJSON("/api/onboarding/users", { name: data.name, username: data.username, password: data.password, language: data.language, client_id: clientId });
  if (!result.ok) { errorBox.textContent = result.body && result.body.message || "Could not create the account"; return; }
  const tokens = await exchangeCode(result.body.auth_code);
  await finishSteps(tokens.access_token);
  location.assign("/");
});

getJSON("/api/onboarding").then((status) => {
  const user = (status.body || []).find((step) => step.step === "user");
  if (user && user.done) location.assign("/");
});
