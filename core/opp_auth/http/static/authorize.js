// The login page (/auth/authorize): drives /auth/providers and the login flow, then redirects with the code.
// It names the client that asks (its host) and warns when that is not this server's own page; for such a
// foreign client a code is sent only after the user acted: a login that finishes without a submitted form
// or an approved passkey (the trusted-network bypass, any other no-click path) waits for a confirmation click.
import { getJSON, postJSON, el } from "/static/api.js";
import { applyCachedTheme, browserLanguage, setLanguage, t, tOptional } from "/static/i18n.js";
import { flowMessage, readForm, renderField } from "/static/forms.js";
import { PASSKEY_PROVIDER, ceremonyMessage, conditionalAvailable, getAssertion, passkeyOptions, supported } from "/static/passkeys.js";

// Back from an identity provider (an external step): /auth/authorize?resume=<flow id>. The query this page was
// opened with was kept in sessionStorage (this tab only) when it sent the browser away.
const EXTERNAL_KEY = "opp-auth-external:";
const resumeId = new URLSearchParams(location.search).get("resume");
const resumedQuery = resumeId ? sessionStorage.getItem(EXTERNAL_KEY + resumeId) : null;
if (resumeId) {
  sessionStorage.removeItem(EXTERNAL_KEY + resumeId);
  if (resumedQuery !== null) history.replaceState(null, "", location.pathname + resumedQuery);
}
const params = new URLSearchParams(resumedQuery !== null ? resumedQuery : location.search);
const clientId = params.get("client_id");
const redirectUri = params.get("redirect_uri");
const state = params.get("state");
const content = document.getElementById("content");
const clientBox = document.getElementById("client");
// The URL parser gives the host as the browser will reach it (IDN as punycode, no user info).
const clientUrl = parseUrl(clientId);
const redirectUrl = parseUrl(redirectUri);
const foreign = !clientUrl || clientUrl.origin !== location.origin;
let providers = [];
let current = null;
let lastInput = {};
// The webauthn module's "Log in with a passkey" provider (listed apart), and the pending autofill request.
let passkeyProvider = null;
let conditional = null;

function show(...nodes) { content.replaceChildren(...nodes); }
function error(text) { return el("p", { class: "error", role: "alert" }, text); }
const message = flowMessage;
function startOver() {
  return el("button", { type: "button", onclick: () => (current ? startFlow(current) : location.reload()) }, t("login.start_over"));
}

function parseUrl(text) {
  try { return text ? new URL(text) : null; } catch (err) { return null; }
}

// A sentence with one placeholder filled by an element (the emphasised host).
function sentence(tag, attrs, key, name, node) {
  const text = t(key);
  const at = text.indexOf(`{${name}}`);
  if (at < 0) return el(tag, attrs, text, " ", node);
  return el(tag, attrs, text.slice(0, at), node, text.slice(at + name.length + 2));
}

// The host (a custom scheme such as the mobile apps' callback is shown with its scheme).
function host(url, id) {
  const text = ["http:", "https:"].includes(url.protocol) ? url.host : `${url.protocol}//${url.host}`;
  return el("strong", { class: "client-host", id }, text);
}

function showClient() {
  if (!clientUrl || !redirectUrl) return;
  const nodes = [sentence("p", { class: "client" }, "login.client", "client", host(clientUrl, "client-host"))];
  if (foreign) {
    const warning = [sentence("p", {}, "login.foreign_client", "client", host(clientUrl))];
    if (redirectUrl.host !== clientUrl.host || redirectUrl.protocol !== clientUrl.protocol) {
      warning.push(sentence("p", {}, "login.redirect_to", "host", host(redirectUrl, "redirect-host")));
    }
    nodes.push(el("div", { class: "warning", id: "client-warning" }, warning));
  }
  clientBox.replaceChildren(...nodes);
}

function confirmFinish(code) {
  const button = el("button", { type: "button", id: "confirm-login", onclick: () => finish(code) },
    t("login.confirm", { client: clientUrl ? clientUrl.host : "" }));
  show(sentence("p", {}, "login.confirm_question", "client", host(clientUrl)), button);
  button.focus();
}

function finish(code) {
  const url = new URL(redirectUri);
  // The server checked redirect_uri; never run a script URL whatever it let through.
  if (["javascript:", "data:", "vbscript:", "blob:", "file:"].includes(url.protocol)) { show(error(t("error.invalid_client"))); return; }
  url.searchParams.set("code", code);
  if (state !== null) url.searchParams.set("state", state);
  location.assign(url.toString());
}

function otherProviders() {
  const others = providers.filter((p) => p !== current);
  if (!others.length) return null;
  return el("div", { class: "others" }, el("p", { class: "muted" }, t("login.other_providers")),
    el("ul", { class: "providers" }, others.map((provider) => el("li", {},
      el("button", { type: "button", class: "link", onclick: () => startFlow(provider) }, t("login.with", { provider: provider.name }))))));
}

// submitted: this step answers what the user sent (a form by click or Enter, a passkey they approved),
// not the flow's start.
function renderStep(step, submitted = false) {
  stopConditional();
  if (step.type === "create_entry") {
    if (foreign && !submitted) confirmFinish(step.result);
    else finish(step.result);
    return;
  }
  if (step.type === "external") { goExternal(step); return; }
  if (step.type === "external_step_done") { continueFlow(step.flow_id); return; }
  const options = passkeyOptions(step);
  if (step.type === "form" && options) { renderPasskeyStep(step, options); return; }
  if (step.type === "abort") { show(error(message(step.reason)), startOver(), otherProviders() || ""); return; }
  const form = el("form", { novalidate: true });
  if (current) form.append(el("p", { class: "muted" }, t("login.using", { provider: current.name })));
  if (step.step_id === "select_mfa_module") form.append(el("p", {}, t("login.choose_mfa")));
  if (step.step_id === "mfa" && step.description_placeholders) {
    form.append(el("p", {}, t("login.enter_code", { module: step.description_placeholders.mfa_module_name })));
  }
  if (step.errors && step.errors.base) form.append(error(message(step.errors.base)));
  // A refused attempt keeps what was typed, except secrets and codes.
  for (const field of step.data_schema) {
    const keep = field.name in lastInput && !["password", "code", "pin"].includes(field.name) && field.format !== "password";
    form.append(renderField(keep ? { ...field, default: lastInput[field.name] } : field));
  }
  const submit = el("button", { type: "submit" }, step.step_id === "init" ? t("login.submit") : t("login.next"));
  form.append(submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    stopConditional();
    submit.disabled = true;
    lastInput = readForm(form, step.data_schema);
    const data = { client_id: clientId, ...lastInput };
    const result = await postJSON(`/auth/login_flow/${step.flow_id}`, data);
    if (!result.ok) { show(error(httpError(result)), startOver()); return; }
    renderStep(result.body, true);
  });
  const others = step.step_id === "init" ? otherProviders() : null;
  show(form, others || "", step.step_id === "init" ? passkeyButton() : "");
  const first = form.querySelector("input, select");
  if (first) first.focus();
  if (step.step_id === "init") startConditional(form);
}

// ---- external steps (OpenID Connect and the like) ------------------------------------------------------

function goExternal(step) {
  const url = parseUrl(step.url);
  if (!url || !["https:", "http:"].includes(url.protocol)) { show(error(message("unknown_error")), startOver()); return; }
  sessionStorage.setItem(EXTERNAL_KEY + step.flow_id, location.search);
  show(el("p", { class: "muted" }, t("login.using", { provider: current ? current.name : url.host })));
  location.assign(url.toString());
}

// Submit the flow again without input: the plugin has recorded what the outside part said.
async function continueFlow(flowId) {
  const result = await postJSON(`/auth/login_flow/${flowId}`, { client_id: clientId });
  const handler = result.body && result.body.handler;
  if (!current && Array.isArray(handler)) current = providers.find((p) => p.type === handler[0] && p.id === handler[1]) || null;
  if (!result.ok) { show(error(httpError(result)), current ? startOver() : "", otherProviders() || ""); return; }
  renderStep(result.body);
}

// ---- passkeys -------------------------------------------------------------------------------------

function passkeyButton() {
  if (!passkeyProvider || !supported()) return "";
  return el("div", { class: "others" }, el("button", { type: "button", class: "secondary", id: "passkey-login",
    onclick: () => startFlow(passkeyProvider) }, t("login.with_passkey")));
}

// A step whose form carries WebAuthn request options: the browser answers, the page posts the assertion.
function renderPasskeyStep(step, options) {
  const passwordless = !!step.description_placeholders.challenge.passwordless;
  const note = el("p", { class: "status", role: "status" });
  const button = el("button", { type: "button", id: "passkey-use" }, t("login.passkey_use"));
  const nodes = [el("p", {}, passwordless ? t("login.passkey_prompt")
    : t("login.passkey_mfa", { module: step.description_placeholders.mfa_module_name || "" }))];
  if (step.errors && step.errors.base) nodes.push(error(message(step.errors.base)));
  nodes.push(button, note);
  if (passwordless && providers.length) {
    nodes.push(el("div", { class: "others" }, el("button", { type: "button", class: "link", id: "password-login",
      onclick: () => startFlow(providers[0]) }, t("login.with_password"))));
  } else if (!passwordless) nodes.push(startOver());
  show(...nodes);
  const run = async () => {
    button.disabled = true;
    note.textContent = t("passkey.follow_browser");
    let credential;
    try { credential = await getAssertion(options); } catch (err) {
      note.textContent = ceremonyMessage(err);
      note.classList.add("error");
      button.disabled = false;
      button.focus();
      return;
    }
    const result = await postJSON(`/auth/login_flow/${step.flow_id}`, { client_id: clientId, credential });
    if (!result.ok) { show(error(httpError(result)), startOver()); return; }
    // A WebAuthn assertion needs the user's presence (a touch, a fingerprint): the user acted.
    renderStep(result.body, true);
  };
  button.addEventListener("click", run);
  if (!supported()) { note.textContent = t("passkey.unsupported"); note.classList.add("error"); button.disabled = true; return; }
  // The first time, ask at once; after a refusal, only when the user asks again.
  if (!(step.errors && step.errors.base)) run(); else button.focus();
}

// Passkey autofill: a username field offers the browser's passkeys (conditional mediation) where supported.
async function startConditional(form) {
  const input = form.querySelector('input[name="username"]');
  if (!input || !passkeyProvider || !(await conditionalAvailable())) return;
  input.setAttribute("autocomplete", "username webauthn");
  const controller = new AbortController();
  stopConditional();
  conditional = controller;
  const started = await postJSON("/auth/login_flow", { client_id: clientId, handler: [passkeyProvider.type, passkeyProvider.id], redirect_uri: redirectUri });
  const options = started.ok ? passkeyOptions(started.body) : null;
  if (!options) return;
  controller.flowId = started.body.flow_id;
  if (controller.signal.aborted) { dropFlow(controller.flowId); return; }
  let credential;
  try { credential = await getAssertion(options, { mediation: "conditional", signal: controller.signal }); } catch (err) { return; }
  if (conditional !== controller) return;
  conditional = null;
  current = passkeyProvider;
  const result = await postJSON(`/auth/login_flow/${controller.flowId}`, { client_id: clientId, credential });
  if (!result.ok) { show(error(httpError(result)), startOver()); return; }
  renderStep(result.body, true);
}

function stopConditional() {
  if (!conditional) return;
  conditional.abort();
  if (conditional.flowId) dropFlow(conditional.flowId);
  conditional = null;
}

function dropFlow(flowId) { fetch(`/auth/login_flow/${flowId}`, { method: "DELETE" }).catch(() => null); }

function httpError(result) {
  const text = result.body && result.body.message;
  if (result.status === 0) return message("cannot_connect");
  if (result.status === 404) return message("login_expired");
  return tOptional(`http.${text}`) || text || message("unknown_error");
}

async function startFlow(provider, automatic = false) {
  current = provider;
  lastInput = {};
  const result = await postJSON("/auth/login_flow", { client_id: clientId, handler: [provider.type, provider.id], redirect_uri: redirectUri });
  if (result.status === 400 && result.body && result.body.message === "invalid client id or redirect uri") {
    show(error(t("error.invalid_client")));
    return;
  }
  if (!result.ok) { show(error(httpError(result)), otherProviders() || ""); return; }
  // A provider that refuses this computer (trusted networks from outside) yields to the next one.
  const next = providers[providers.indexOf(provider) + 1];
  if (automatic && next && result.body.type === "abort" && result.body.reason === "not_allowed") { startFlow(next, true); return; }
  renderStep(result.body);
}

async function start() {
  applyCachedTheme();
  await setLanguage(browserLanguage());
  if (!clientUrl || !redirectUrl) { show(error(t("error.invalid_client"))); return; }
  showClient();
  const result = await getJSON("/auth/providers");
  if (result.status === 400 && result.body && result.body.code === "onboarding_required") {
    location.assign("/onboarding.html");
    return;
  }
  // A list (Open Peer Power 2021), or {providers, preselect_remember_me} (http: auth_api: homeassistant).
  const listed = result.ok && result.body && !Array.isArray(result.body) ? result.body.providers : result.body;
  providers = result.ok && Array.isArray(listed) ? listed : [];
  if (!result.ok && result.status === 0) { show(error(message("cannot_connect"))); return; }
  passkeyProvider = providers.find((provider) => provider.type === PASSKEY_PROVIDER) || null;
  providers = providers.filter((provider) => provider !== passkeyProvider);
  if (!providers.length && passkeyProvider) { startFlow(passkeyProvider); return; }
  if (!providers.length) { show(error(t("login.no_providers"))); return; }
  if (resumeId) {
    if (resumedQuery === null) { show(error(message("login_expired")), otherProviders() || ""); return; }
    continueFlow(resumeId);
    return;
  }
  // The first provider starts at once, so a trusted-network bypass needs no click (for this server's own pages).
  startFlow(providers[0], true);
}

start();
