// The login page: drives /auth/providers and the login flow, then redirects with the code.
import { getJSON, postJSON, el } from "/static/api.js";

const MESSAGES = {
  invalid_auth: "Invalid username or password",
  invalid_code: "Invalid code, please try again",
  invalid_auth_module: "Invalid multi-factor authentication module",
  cannot_connect: "The authentication server cannot be reached, please try again later",
  not_allowed: "Your computer is not allowed",
  login_expired: "Session expired, please log in again",
  too_many_retry: "Too many retries, please log in again",
  unknown_error: "Unexpected error",
  no_available_service: "No notification services available",
  invalid_client: "Error: invalid client id or redirect url",
};
const FIELD_LABELS = { username: "Username", password: "Password", code: "Code", pin: "PIN", user: "User", multi_factor_auth_module: "Multi-factor authentication module" };

const params = new URLSearchParams(location.search);
const clientId = params.get("client_id");
const redirectUri = params.get("redirect_uri");
const state = params.get("state");
const content = document.getElementById("content");

function show(...nodes) { content.replaceChildren(...nodes); }
function error(text) { return el("p", { class: "error", role: "alert" }, text); }

function finish(code) {
  const url = new URL(redirectUri);
  url.searchParams.set("code", code);
  if (state !== null) url.searchParams.set("state", state);
  location.assign(url.toString());
}

function renderField(field) {
  const id = `field-${field.name}`;
  const label = el("label", { for: id }, FIELD_LABELS[field.name] || field.name);
  let input;
  if (field.type === "select") {
    input = el("select", { id, name: field.name }, field.options.map(([value, text]) => el("option", { value }, text)));
  } else if (field.type === "boolean") {
    input = el("input", { id, name: field.name, type: "checkbox" });
  } else if (field.type === "integer" || field.type === "float") {
    input = el("input", { id, name: field.name, type: "number", step: field.type === "float" ? "any" : "1" });
  } else {
    const secret = field.name === "password" || field.format === "password";
    const isCode = field.name === "code" || field.name === "pin";
    input = el("input", { id, name: field.name, type: secret ? "password" : "text",
      autocomplete: secret ? "current-password" : field.name === "username" ? "username" : isCode ? "one-time-code" : "off",
      inputmode: isCode ? "numeric" : undefined });
  }
  return [label, input];
}

function renderStep(step) {
  if (step.type === "create_entry") { finish(step.result); return; }
  if (step.type === "abort") {
    show(error(MESSAGES[step.reason] || step.reason), el("button", { type: "button", onclick: start }, "Start over"));
    return;
  }
  const form = el("form", { novalidate: true });
  if (step.step_id === "mfa" && step.description_placeholders) {
    form.append(el("p", {}, `Enter the code from ${step.description_placeholders.mfa_module_name}.`));
  }
  if (step.errors && step.errors.base) form.append(error(MESSAGES[step.errors.base] || step.errors.base));
  for (const field of step.data_schema) form.append(...renderField(field));
  form.append(el("button", { type: "submit" }, step.step_id === "init" ? "Log in" : "Next"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = { client_id: clientId };
    for (const field of step.data_schema) {
      const input = form.elements[field.name];
      data[field.name] = field.type === "boolean" ? input.checked : field.type === "integer" ? parseInt(input.value, 10) : input.value;
    }
    const result = await postJSON(`/auth/login_flow/${step.flow_id}`, data);
    if (!result.ok) { show(error(result.body && result.body.message || "Login failed"), el("button", { type: "button", onclick: start }, "Start over")); return; }
    renderStep(result.body);
  });
  show(form);
  const first = form.querySelector("input, select");
  if (first) first.focus();
}

async function startFlow(provider) {
  const result = await postJSON("/auth/login_flow", { client_id: clientId, handler: [provider.type, provider.id], redirect_uri: redirectUri });
  if (result.status === 400 && result.body && result.body.message === "invalid client id or redirect uri") {
    show(error(MESSAGES.invalid_client));
    return;
  }
  if (!result.ok) { show(error(result.body && result.body.message || "Login failed")); return; }
  renderStep(result.body);
}

async function start() {
  if (!clientId || !redirectUri) { show(error(MESSAGES.invalid_client)); return; }
  const result = await getJSON("/auth/providers");
  if (result.status === 400 && result.body && result.body.code === "onboarding_required") {
    location.assign("/onboarding.html");
    return;
  }
  const providers = result.body || [];
  if (!providers.length) { show(error("No way to log in is configured.")); return; }
  if (providers.length === 1) { startFlow(providers[0]); return; }
  show(el("p", {}, "Log in with"), el("ul", { class: "providers" }, providers.map((provider) =>
    el("li", {}, el("button", { type: "button", class: "link", onclick: () => startFlow(provider) }, provider.name)))));
}

start();
