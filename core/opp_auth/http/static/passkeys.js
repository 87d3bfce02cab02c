// Passkeys (WebAuthn) in the pages: the browser ceremony for any flow step whose description_placeholders
// carry challenge.webauthn (the webauthn module's MFA step, its passwordless login), and the passkey lists of
// the profile and users pages (auth/webauthn/* websocket commands). No inline script, no eval.
import { el } from "/static/api.js";
import { formatDate, t } from "/static/i18n.js";
import { commandMessage } from "/static/forms.js";

export const PASSKEY_PROVIDER = "webauthn";

export function supported() {
  return typeof window.PublicKeyCredential === "function" && !!navigator.credentials && window.isSecureContext;
}

function fromB64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function toB64url(buffer) {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function descriptors(list) {
  return (list || []).map((c) => ({ ...c, id: fromB64url(c.id) }));
}

// The PublicKeyCredential as the JSON py_webauthn reads (what credential.toJSON() gives where it exists).
function credentialJSON(cred) {
  const r = cred.response;
  const response = { clientDataJSON: toB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toB64url(r.attestationObject);
    if (typeof r.getTransports === "function") response.transports = r.getTransports();
  } else {
    response.authenticatorData = toB64url(r.authenticatorData);
    response.signature = toB64url(r.signature);
    if (r.userHandle) response.userHandle = toB64url(r.userHandle);
  }
  return JSON.stringify({ id: cred.id, rawId: toB64url(cred.rawId), type: cred.type, response,
    clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    authenticatorAttachment: cred.authenticatorAttachment || undefined });
}

// navigator.credentials.get() for request options in JSON form; resolves to the assertion JSON (string).
export async function getAssertion(options, { mediation, signal } = {}) {
  const publicKey = { ...options, challenge: fromB64url(options.challenge), allowCredentials: descriptors(options.allowCredentials) };
  const request = { publicKey, signal };
  if (mediation) request.mediation = mediation;
  return credentialJSON(await navigator.credentials.get(request));
}

// navigator.credentials.create() for creation options in JSON form; resolves to the registration JSON (string).
export async function createCredential(options) {
  const publicKey = { ...options, challenge: fromB64url(options.challenge),
    user: { ...options.user, id: fromB64url(options.user.id) }, excludeCredentials: descriptors(options.excludeCredentials) };
  return credentialJSON(await navigator.credentials.create({ publicKey }));
}

export function passkeyOptions(step) {
  const challenge = step && step.description_placeholders && step.description_placeholders.challenge;
  return challenge && challenge.webauthn ? challenge.webauthn : null;
}

// Why a ceremony did not finish, as a sentence (the user cancelling is the usual case).
export function ceremonyMessage(err) {
  if (!supported()) return t("passkey.unsupported");
  if (err && err.name === "NotAllowedError") return t("passkey.cancelled");
  if (err && err.name === "InvalidStateError") return t("passkey.already_registered");
  return t("passkey.failed");
}

export async function conditionalAvailable() {
  try {
    return supported() && typeof PublicKeyCredential.isConditionalMediationAvailable === "function"
      && await PublicKeyCredential.isConditionalMediationAvailable();
  } catch (err) { return false; }
}

// ---- profile page -----------------------------------------------------------------------------------

function refreshMfa(ctx) { if (ctx.refreshMfa) ctx.refreshMfa(); }
function status() { return el("p", { class: "status", role: "status" }); }
function say(node, text, isError = false) { node.textContent = text; node.classList.toggle("error", isError); }

function passkeyRow(passkey, actions) {
  return el("li", { class: "row passkey", "data-passkey-id": passkey.id },
    el("div", { class: "grow" }, el("strong", { class: "passkey-name" }, passkey.name),
      passkey.model ? el("span", { class: "tag" }, passkey.model) : "",
      el("dl", { class: "details" },
        el("dt", {}, t("profile.created")), el("dd", {}, formatDate(passkey.created_at)),
        el("dt", {}, t("profile.last_used")), el("dd", {}, passkey.last_used_at ? formatDate(passkey.last_used_at) : t("common.never")))),
    ...actions);
}

// The profile's "Passkeys" section, or null when no webauthn module is configured (the command is unknown).
export async function passkeySection(ctx, section) {
  let listing;
  try { listing = await ctx.conn.call({ type: "auth/webauthn/passkeys" }); } catch (err) { return null; }
  ctx.passkeyModuleId = listing.mfa_module_id;
  const body = el("div", { class: "body" });
  const node = section("passkeys", t("passkey.title"), el("p", { class: "muted" },
    listing.passwordless ? t("passkey.help_passwordless") : t("passkey.help")), body);
  renderPasskeys(body, ctx, listing);
  return node;
}

async function reload(body, ctx) {
  renderPasskeys(body, ctx, await ctx.conn.call({ type: "auth/webauthn/passkeys" }));
}

function renderPasskeys(body, ctx, listing) {
  const note = status();
  const rows = listing.passkeys.map((passkey) => passkeyRow(passkey, [
    el("button", { type: "button", class: "secondary", "aria-label": t("passkey.rename_named", { name: passkey.name }),
      onclick: () => renderRename(body, ctx, passkey) }, t("passkey.rename")),
    el("button", { type: "button", class: "secondary", "aria-label": t("passkey.remove_named", { name: passkey.name }),
      onclick: async () => {
        if (!confirm(t("passkey.remove_confirm", { name: passkey.name }))) return;
        try { await ctx.conn.call({ type: "auth/webauthn/remove", passkey_id: passkey.id }); } catch (err) { say(note, commandMessage(err), true); return; }
        await ctx.reloadUser(); refreshMfa(ctx); await reload(body, ctx);
      } }, t("common.delete"))]));
  const add = el("button", { type: "button", id: "passkey-add", onclick: () => {
    if (!supported()) { say(note, t("passkey.unsupported"), true); return; }
    if (listing.proof_left > 0) renderAdd(body, ctx); else renderReauth(body, ctx, listing);
  } }, t("passkey.add"));
  body.replaceChildren(rows.length ? el("ul", { class: "rows", id: "passkey-list" }, rows) : el("p", { id: "passkey-none" }, t("passkey.none")), add, note);
}

function renderAdd(body, ctx) {
  const note = status();
  const form = el("form", { class: "setup", novalidate: true, id: "passkey-add-form" }, el("h3", {}, t("passkey.add")),
    el("div", { class: "field" }, el("label", { for: "passkey-name" }, t("passkey.name")),
      el("input", { id: "passkey-name", name: "passkey-name", type: "text", maxlength: "64", autocomplete: "off", value: t("passkey.default_name") })),
    note, el("div", { class: "actions" }, el("button", { type: "submit" }, t("passkey.create")),
      el("button", { type: "button", class: "secondary", onclick: () => reload(body, ctx) }, t("common.cancel"))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.elements["passkey-name"].value.trim();
    if (!name) { say(note, t("passkey.name_needed"), true); return; }
    let credential;
    try {
      const { publicKey } = await ctx.conn.call({ type: "auth/webauthn/register_options" });
      say(note, t("passkey.follow_browser"));
      credential = await createCredential(publicKey);
    } catch (err) { say(note, err && err.code ? commandMessage(err) : ceremonyMessage(err), true); return; }
    try { await ctx.conn.call({ type: "auth/webauthn/register", name, credential }); } catch (err) { say(note, commandMessage(err), true); return; }
    await ctx.reloadUser();
    refreshMfa(ctx);
    await reload(body, ctx);
    say(body.querySelector(".status"), t("passkey.added", { name }));
  });
  body.replaceChildren(form);
  form.elements["passkey-name"].select();
}

// Adding a passkey needs a proof from the last 5 minutes: the password, another factor's code, or a passkey.
function renderReauth(body, ctx, listing) {
  const note = status();
  const enrolled = ctx.user.mfa_modules.filter((m) => m.enabled && m.id !== listing.mfa_module_id);
  const form = el("form", { class: "setup", novalidate: true, id: "passkey-reauth" }, el("h3", {}, t("passkey.reauth_title")),
    el("p", {}, t("passkey.reauth_help")),
    el("div", { class: "field" }, el("label", { for: "reauth-password" }, t("field.password")),
      el("input", { id: "reauth-password", name: "reauth-password", type: "password", autocomplete: "current-password" })),
    enrolled.length ? el("div", { class: "field" }, el("label", { for: "reauth-code" }, t("passkey.reauth_code", { module: enrolled[0].name })),
      el("input", { id: "reauth-code", name: "reauth-code", type: "text", autocomplete: "one-time-code", inputmode: "numeric" })) : "",
    note, el("div", { class: "actions" }, el("button", { type: "submit" }, t("passkey.reauth_confirm")),
      listing.passkeys.length ? el("button", { type: "button", class: "secondary", id: "reauth-passkey", onclick: async () => {
        try {
          const { publicKey } = await ctx.conn.call({ type: "auth/webauthn/reauth_options" });
          await ctx.conn.call({ type: "auth/webauthn/reauth", credential: await getAssertion(publicKey) });
        } catch (err) { say(note, err && err.code ? commandMessage(err) : ceremonyMessage(err), true); return; }
        renderAdd(body, ctx);
      } }, t("passkey.reauth_with_passkey")) : "",
      el("button", { type: "button", class: "secondary", onclick: () => reload(body, ctx) }, t("common.cancel"))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = form.elements["reauth-password"].value;
    const code = form.elements["reauth-code"] ? form.elements["reauth-code"].value.trim() : "";
    const message = { type: "auth/webauthn/reauth" };
    if (password) message.password = password;
    else if (code) { message.code = code; message.code_module_id = enrolled[0].id; } else { say(note, t("onboarding.fill_all"), true); return; }
    try { await ctx.conn.call(message); } catch (err) { say(note, commandMessage(err), true); return; }
    renderAdd(body, ctx);
  });
  body.replaceChildren(form);
  form.elements["reauth-password"].focus();
}

function renderRename(body, ctx, passkey) {
  const note = status();
  const form = el("form", { class: "setup", novalidate: true, id: "passkey-rename" }, el("h3", {}, t("passkey.rename_named", { name: passkey.name })),
    el("div", { class: "field" }, el("label", { for: "passkey-new-name" }, t("passkey.name")),
      el("input", { id: "passkey-new-name", name: "passkey-new-name", type: "text", maxlength: "64", autocomplete: "off", value: passkey.name })),
    note, el("div", { class: "actions" }, el("button", { type: "submit" }, t("common.save")),
      el("button", { type: "button", class: "secondary", onclick: () => reload(body, ctx) }, t("common.cancel"))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await ctx.conn.call({ type: "auth/webauthn/rename", passkey_id: passkey.id, name: form.elements["passkey-new-name"].value });
    } catch (err) { say(note, commandMessage(err), true); return; }
    await reload(body, ctx);
  });
  body.replaceChildren(form);
  form.elements["passkey-new-name"].select();
}

// ---- users page (administrators) ----------------------------------------------------------------------

// The passkeys of a user with remove buttons, or null without a webauthn module.
export async function adminPasskeys(ctx, user) {
  let listing;
  try { listing = await ctx.conn.call({ type: "auth/webauthn/admin/passkeys", user_id: user.id }); } catch (err) { return null; }
  const box = el("div", { id: "user-passkeys" });
  const note = status();
  const render = (passkeys) => box.replaceChildren(el("h3", {}, t("passkey.title")),
    passkeys.length ? el("ul", { class: "rows" }, passkeys.map((passkey) => passkeyRow(passkey, [
      el("button", { type: "button", class: "secondary", "aria-label": t("passkey.remove_named", { name: passkey.name }),
        onclick: async () => {
          if (!confirm(t("passkey.remove_confirm", { name: passkey.name }))) return;
          try { await ctx.conn.call({ type: "auth/webauthn/admin/remove", user_id: user.id, passkey_id: passkey.id }); } catch (err) { say(note, commandMessage(err), true); return; }
          render((await ctx.conn.call({ type: "auth/webauthn/admin/passkeys", user_id: user.id })).passkeys);
        } }, t("common.delete"))]))) : el("p", { class: "muted" }, t("passkey.none")), note);
  render(listing.passkeys);
  return box;
}
