// Onboarding (SPEC 8): create the owner, sign in, finish the remaining steps, go home.
import { clientId, exchangeCode, getJSON, postJSON, redirectUri, el } from "/static/api.js";
import { LANGUAGES, applyCachedTheme, browserLanguage, setLanguage, t } from "/static/i18n.js";

const form = document.getElementById("form");
const errorBox = document.getElementById("error");
const languageSelect = document.getElementById("language");
const nameInput = document.getElementById("name");
const usernameInput = document.getElementById("username");
let usernameEdited = false;

async function finishSteps(accessToken) {
  const status = await getJSON("/api/onboarding");
  const done = new Set((status.body || []).filter((step) => step.done).map((step) => step.step));
  if (!done.has("core_config")) await postJSON("/api/onboarding/core_config", {}, accessToken);
  if (!done.has("analytics")) await postJSON("/api/onboarding/analytics", {}, accessToken);
  if (!done.has("integration")) await postJSON("/api/onboarding/integration", { client_id: clientId, redirect_uri: redirectUri }, accessToken);
}

nameInput.addEventListener("input", () => {
  if (!usernameEdited) usernameInput.value = nameInput.value.trim().toLowerCase().replace(/\s+/g, "");
});
usernameInput.addEventListener("input", () => { usernameEdited = true; });
languageSelect.addEventListener("change", () => setLanguage(languageSelect.value));

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const data = Object.fromEntries(new FormData(form));
  if (!data.name.trim() || !data.username.trim() || !data.password) { errorBox.textContent = t("onboarding.fill_all"); return; }
  if (data.password !== data.password_confirm) { errorBox.textContent = t("common.passwords_differ"); return; }
  const submit = document.getElementById("submit");
  submit.disabled = true;
  const result = await postJSON("/api/onboarding/users", { name: data.name.trim(), username: data.username.trim(), password: data.password, language: data.language, client_id: clientId });
  if (!result.ok) {
    submit.disabled = false;
    errorBox.textContent = result.body && result.body.message || t("onboarding.failed");
    return;
  }
  const tokens = await exchangeCode(result.body.auth_code);
  await finishSteps(tokens.access_token);
  location.assign("/");
});

async function main() {
  applyCachedTheme();
  const status = await getJSON("/api/onboarding");
  const user = (status.body || []).find((step) => step.step === "user");
  if (user && user.done) { location.assign("/"); return; }
  const lang = browserLanguage();
  languageSelect.replaceChildren(...Object.entries(LANGUAGES).map(([code, name]) => el("option", { value: code }, name)));
  languageSelect.value = lang;
  await setLanguage(lang);
  nameInput.focus();
}

main();
