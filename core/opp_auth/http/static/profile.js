// The profile page: language, theme, password, MFA, refresh tokens, long-lived tokens, recent sign-ins, log out.
import { clearTokens, loginUrl, logout, el } from "/static/api.js";
import { LANGUAGES, THEMES, applyTheme, formatDate, setLanguage, t } from "/static/i18n.js";
import { commandMessage, flowMessage, readForm, renderField } from "/static/forms.js";
import { passkeySection } from "/static/passkeys.js";
import { signInsSection } from "/static/history.js";

const LOCAL = "openpeerpower";
const LONG_LIVED = "long_lived_access_token";

function section(id, title, ...children) {
  return el("section", { class: "card", id, "aria-labelledby": `${id}-title` }, el("h2", { id: `${id}-title` }, title), ...children);
}
function status() { return el("p", { class: "status", role: "status" }); }
function say(node, text, isError = false) { node.textContent = text; node.classList.toggle("error", isError); }

export async function renderProfile(root, ctx) {
  const { user } = ctx;
  const role = user.is_owner ? t("profile.owner") : user.is_admin ? t("profile.admin") : t("profile.user");
  // Passkeys have their own section (a browser ceremony); null without the webauthn plugin.
  const passkeys = await passkeySection(ctx, section);
  root.replaceChildren(
    el("section", { class: "card profile-head" }, el("div", { class: "badge large", "aria-hidden": "true" }, document.getElementById("badge").textContent),
      el("div", {}, el("h1", {}, user.name || ""), el("p", { class: "muted" }, role))),
    languageSection(ctx), themeSection(ctx),
    user.credentials.some((c) => c.auth_provider_type === LOCAL) ? passwordSection(ctx) : "",
    mfaSection(ctx),
    passkeys || "",
    section("refresh-tokens", t("profile.refresh_tokens"), el("p", { class: "muted" }, t("profile.refresh_tokens_help")), el("div", { class: "body" })),
    section("long-lived-tokens", t("profile.llat"), el("p", { class: "muted" }, t("profile.llat_help")), el("div", { class: "body" })),
    signInsSection(ctx, section),
    section("logout-section", t("profile.logout_title"), el("button", { type: "button", id: "logout", class: "danger", onclick: () => logout(ctx.conn) }, t("profile.logout"))),
  );
  await refreshTokens(root, ctx);
}

function languageSection(ctx) {
  const select = el("select", { id: "profile-language", value: ctx.settings.language || document.documentElement.lang },
    Object.entries(LANGUAGES).map(([code, name]) => el("option", { value: code }, name)));
  const note = status();
  select.addEventListener("change", async () => {
    try {
      await ctx.conn.call({ type: "frontend/set_user_data", key: "language", value: select.value });
    } catch (err) { say(note, commandMessage(err), true); return; }
    ctx.settings.language = select.value;
    await setLanguage(select.value);
    await ctx.rerender();
    document.getElementById("profile-language").focus();
  });
  return section("language", t("profile.language"), el("label", { for: "profile-language" }, t("profile.language_help")), select, note);
}

function themeSection(ctx) {
  const currentTheme = ctx.settings.theme || "system";
  const note = status();
  const choices = THEMES.map((theme) => el("div", { class: "check" },
    el("input", { type: "radio", name: "theme", id: `theme-${theme}`, value: theme, checked: theme === currentTheme,
      onchange: async () => {
        applyTheme(theme);
        try { await ctx.conn.call({ type: "frontend/set_user_data", key: "theme", value: theme }); } catch (err) { say(note, commandMessage(err), true); return; }
        ctx.settings.theme = theme;
      } }),
    el("label", { for: `theme-${theme}` }, t(`theme.${theme}`))));
  return section("theme", t("profile.theme"), el("fieldset", {}, el("legend", { class: "muted" }, t("profile.theme_help")), choices), note);
}

function passwordSection(ctx) {
  const note = status();
  const form = el("form", { novalidate: true },
    field("current-password", t("field.current_password"), "password", "current-password"),
    field("new-password", t("field.new_password"), "password", "new-password"),
    field("confirm-password", t("field.password_confirm"), "password", "new-password"),
    note, el("button", { type: "submit" }, t("profile.change_password")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const current = form.elements["current-password"].value;
    const next = form.elements["new-password"].value;
    if (!current || !next) { say(note, t("onboarding.fill_all"), true); return; }
    if (next !== form.elements["confirm-password"].value) { say(note, t("common.passwords_differ"), true); return; }
    try {
      await ctx.conn.call({ type: "config/auth_provider/openpeerpower/change_password", current_password: current, new_password: next });
    } catch (err) { say(note, commandMessage(err), true); return; }
    form.reset();
    say(note, t("profile.password_changed"));
  });
  return section("password", t("profile.password"), form);
}

export function field(id, label, type = "text", autocomplete = "off", value = undefined) {
  return el("div", { class: "field" }, el("label", { for: id }, label),
    el("input", { id, name: id, type, autocomplete, value, autocapitalize: "off", spellcheck: "false" }));
}

function mfaSection(ctx) {
  const body = el("div", { class: "body" });
  const node = section("mfa", t("profile.mfa"), el("p", { class: "muted" }, t("profile.mfa_help")), body);
  ctx.refreshMfa = () => renderMfa(body, ctx);  // the passkey section enrols outside this list
  renderMfa(body, ctx);
  return node;
}

async function renderMfa(body, ctx) {
  const modules = ctx.user.mfa_modules;
  if (!modules.length) { body.replaceChildren(el("p", {}, t("profile.mfa_none"))); return; }
  const note = status();
  // Modules with recovery codes (the totp plugin); without that plugin the command is unknown.
  let recovery = {};
  try { recovery = (await ctx.conn.call({ type: "auth/totp/info" })).modules; } catch (err) { recovery = {}; }
  body.replaceChildren(el("ul", { class: "rows" }, modules.map((module) => el("li", { class: "row", "data-module": module.id },
    el("div", { class: "grow" }, el("strong", {}, module.name), " ",
      el("span", { class: module.enabled ? "tag on" : "tag" }, module.enabled ? t("profile.enabled") : t("profile.disabled"))),
    module.enabled && recovery[module.id]
      ? el("button", { type: "button", class: "secondary", "aria-label": t("profile.recovery_new_named", { module: module.name }),
        title: t("profile.recovery_left", { count: recovery[module.id].recovery_codes_left }),
        onclick: () => renderNewRecoveryCodes(body, ctx, module) }, t("profile.recovery_new"))
      : "",
    module.enabled
      ? el("button", { type: "button", class: "secondary", "aria-label": t("profile.mfa_disable_named", { module: module.name }),
        onclick: async () => {
          if (!confirm(t("profile.mfa_disable_confirm", { module: module.name }))) return;
          try { await ctx.conn.call({ type: "auth/depose_mfa", mfa_module_id: module.id }); } catch (err) { say(note, commandMessage(err), true); return; }
          await ctx.reloadUser(); renderMfa(body, ctx);
        } }, t("profile.disable"))
      : module.id === ctx.passkeyModuleId ? el("a", { href: "#passkeys" }, t("passkey.add"))
      : el("button", { type: "button", "aria-label": t("profile.mfa_enable_named", { module: module.name }),
        onclick: async () => {
          try {
            const step = await ctx.conn.call({ type: "auth/setup_mfa", mfa_module_id: module.id });
            renderSetupStep(body, ctx, module, step);
          } catch (err) { say(note, commandMessage(err), true); }
        } }, t("profile.enable"))))), note);
}

// One step of a module's setup flow; TOTP's placeholders add the QR code and the key.
function renderSetupStep(body, ctx, module, step) {
  const done = async () => { await ctx.reloadUser(); renderMfa(body, ctx); };
  if (step.type === "abort") {
    body.replaceChildren(el("p", { class: "error", role: "alert" }, flowMessage(step.reason)), el("button", { type: "button", onclick: done }, t("common.close")));
    return;
  }
  if (step.type === "create_entry") {
    const codes = step.data && Array.isArray(step.data.recovery_codes) ? step.data.recovery_codes : null;
    if (!codes) { done(); return; }
    showRecoveryCodes(body, codes, done);
    return;
  }
  const placeholders = step.description_placeholders || {};
  const form = el("form", { class: "setup", novalidate: true }, el("h3", {}, t("profile.mfa_setup", { module: module.name })));
  if (placeholders.qr_code) {
    form.append(el("p", {}, t("profile.totp_scan")),
      el("img", { class: "qr", alt: t("profile.qr_alt"), src: svgDataUrl(placeholders.qr_code) }));
  }
  if (placeholders.code) form.append(el("p", {}, t("profile.totp_key"), " ", el("code", { id: "mfa-secret", class: "secret" }, placeholders.code)));
  if (step.errors && step.errors.base) form.append(el("p", { class: "error", role: "alert" }, flowMessage(step.errors.base)));
  for (const f of step.data_schema) form.append(renderField(f, "mfa"));
  const submit = el("button", { type: "submit" }, t("login.next"));
  form.append(el("div", { class: "actions" }, submit, el("button", { type: "button", class: "secondary", onclick: done }, t("common.cancel"))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const next = await ctx.conn.call({ type: "auth/setup_mfa", flow_id: step.flow_id, user_input: readForm(form, step.data_schema) });
      renderSetupStep(body, ctx, module, next);
    } catch (err) {
      submit.disabled = false;
      form.append(el("p", { class: "error", role: "alert" }, commandMessage(err)));
    }
  });
  body.replaceChildren(form);
  const first = form.querySelector("input, select");
  if (first) first.focus();
}

// Recovery codes are shown once, right after they are made.
function showRecoveryCodes(body, codes, done) {
  const finished = el("button", { type: "button", onclick: done }, t("profile.recovery_saved"));
  body.replaceChildren(el("div", { class: "setup", id: "recovery-codes" },
    el("h3", {}, t("profile.recovery_title")), el("p", {}, t("profile.recovery_help")),
    el("ul", { class: "codes" }, codes.map((code) => el("li", {}, el("code", {}, code)))), finished));
  finished.focus();
}

// A new set of recovery codes needs a current code from the app (proof of possession).
function renderNewRecoveryCodes(body, ctx, module) {
  const done = async () => { await ctx.reloadUser(); renderMfa(body, ctx); };
  const note = status();
  const form = el("form", { class: "setup", novalidate: true },
    el("h3", {}, t("profile.recovery_new")), el("p", {}, t("profile.recovery_code_prompt")),
    field("recovery-totp-code", t("field.code"), "text", "one-time-code"), note,
    el("div", { class: "actions" }, el("button", { type: "submit" }, t("profile.recovery_new")),
      el("button", { type: "button", class: "secondary", onclick: done }, t("common.cancel"))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const reply = await ctx.conn.call({ type: "auth/totp/recovery_codes", mfa_module_id: module.id, code: form.elements["recovery-totp-code"].value });
      showRecoveryCodes(body, reply.recovery_codes, done);
    } catch (err) { say(note, commandMessage(err), true); }
  });
  body.replaceChildren(form);
  form.elements["recovery-totp-code"].focus();
}

// Inline SVG (as made for HTML) needs its namespace to load as an image; an <img> never runs scripts.
function svgDataUrl(svg) {
  const full = /<svg[^>]*xmlns=/.test(svg) ? svg : svg.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg"');
  return `data:image/svg+xml;charset=utf-8,${encodeURIComponent(full)}`;
}

async function refreshTokens(root, ctx) {
  const tokens = await ctx.conn.call({ type: "auth/refresh_tokens" });
  tokens.sort((a, b) => (b.created_at > a.created_at ? 1 : -1));
  renderRefreshTokens(root.querySelector("#refresh-tokens .body"), ctx, tokens.filter((tok) => tok.type !== LONG_LIVED), root);
  renderLongLived(root.querySelector("#long-lived-tokens .body"), ctx, tokens.filter((tok) => tok.type === LONG_LIVED), root);
}

function tokenDetails(token) {
  return el("dl", { class: "details" },
    el("dt", {}, t("profile.created")), el("dd", {}, formatDate(token.created_at)),
    el("dt", {}, t("profile.last_used")), el("dd", {}, formatDate(token.last_used_at)),
    el("dt", {}, t("profile.last_ip")), el("dd", {}, token.last_used_ip || "—"));
}

function renderRefreshTokens(body, ctx, tokens, root) {
  const note = status();
  const remove = async (token) => {
    const name = token.client_name || token.client_id;
    if (!confirm(t(token.is_current ? "profile.delete_current_confirm" : "profile.delete_token_confirm", { client: name }))) return;
    try { await ctx.conn.call({ type: "auth/delete_refresh_token", refresh_token_id: token.id }); } catch (err) { say(note, commandMessage(err), true); return; }
    if (token.is_current) { ctx.conn.close(); clearTokens(); location.assign(loginUrl("/")); return; }
    await refreshTokens(root, ctx);
  };
  const others = tokens.filter((tok) => !tok.is_current).length;
  body.replaceChildren(el("ul", { class: "rows" }, tokens.map((token) => el("li", { class: "row token", "data-token-id": token.id },
    el("div", { class: "grow" }, el("strong", { class: "client" }, token.client_name || token.client_id || "?"),
      token.is_current ? el("span", { class: "tag on" }, t("profile.this_device")) : "", tokenDetails(token)),
    el("button", { type: "button", class: "secondary", "aria-label": t("profile.delete_token_named", { client: token.client_name || token.client_id }),
      onclick: () => remove(token) }, t("common.delete"))))),
  others ? el("button", { type: "button", class: "danger", id: "delete-all-tokens", onclick: async () => {
    if (!confirm(t("profile.delete_all_confirm"))) return;
    try {
      await ctx.conn.call({ type: "auth/delete_all_refresh_tokens", token_type: "normal", delete_current_token: false });
    } catch (err) { say(note, commandMessage(err), true); return; }
    await refreshTokens(root, ctx);
  } }, t("profile.delete_all")) : "", note);
}

function renderLongLived(body, ctx, tokens, root) {
  const note = status();
  const list = tokens.length
    ? el("ul", { class: "rows" }, tokens.map((token) => el("li", { class: "row token", "data-token-id": token.id },
      el("div", { class: "grow" }, el("strong", { class: "client" }, token.client_name), tokenDetails(token)),
      el("button", { type: "button", class: "secondary", "aria-label": t("profile.delete_token_named", { client: token.client_name }),
        onclick: async () => {
          if (!confirm(t("profile.delete_token_confirm", { client: token.client_name }))) return;
          try { await ctx.conn.call({ type: "auth/delete_refresh_token", refresh_token_id: token.id }); } catch (err) { say(note, commandMessage(err), true); return; }
          await refreshTokens(root, ctx);
        } }, t("common.delete")))))
    : el("p", { class: "muted" }, t("profile.llat_none"));
  const form = el("form", { novalidate: true, class: "inline-form" },
    field("llat-name", t("field.token_name")),
    field("llat-days", t("field.lifespan_days"), "number", "off", "3650"),
    el("button", { type: "submit" }, t("profile.llat_create")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.elements["llat-name"].value.trim();
    const days = parseInt(form.elements["llat-days"].value, 10);
    if (!name) { say(note, t("profile.llat_name_needed"), true); return; }
    let token;
    try {
      token = await ctx.conn.call({ type: "auth/long_lived_access_token", client_name: name, lifespan: Number.isFinite(days) ? days : 3650 });
    } catch (err) { say(note, err.code === "unknown_error" ? t("profile.llat_exists") : commandMessage(err), true); return; }
    await refreshTokens(root, ctx);
    showNewToken(root.querySelector("#long-lived-tokens .body"), token);
  });
  body.replaceChildren(list, form, note);
}

function showNewToken(body, token) {
  const input = el("input", { id: "llat-value", readonly: true, value: token, "aria-label": t("profile.llat_value") });
  const copy = el("button", { type: "button", id: "llat-copy", onclick: async () => {
    try { await navigator.clipboard.writeText(token); } catch (err) { input.select(); document.execCommand("copy"); }
    copy.textContent = t("profile.copied");
  } }, t("profile.copy"));
  const box = el("div", { class: "setup", id: "new-token" }, el("h3", {}, t("profile.llat_created")), el("p", {}, t("profile.llat_once")),
    el("div", { class: "copy-row" }, input, copy),
    el("button", { type: "button", class: "secondary", onclick: () => box.remove() }, t("common.close")));
  body.prepend(box);
  input.focus();
  input.select();
}
