// User administration (owner and administrators), through the config/auth/* websocket commands.
import { el } from "/static/api.js";
import { t } from "/static/i18n.js";
import { commandMessage } from "/static/forms.js";
import { field } from "/static/profile.js";
import { adminPasskeys } from "/static/passkeys.js";
import { loginSummary, summaryCells } from "/static/history.js";

const GROUPS = ["system-admin", "system-users", "system-read-only"];
const LOCAL = "config/auth_provider/openpeerpower";

function status() { return el("p", { class: "status", role: "status" }); }
function say(node, text, isError = false) { node.textContent = text; node.classList.toggle("error", isError); }
function groupSelect(id, value, disabled = false) {
  return el("div", { class: "field" }, el("label", { for: id }, t("field.group")),
    el("select", { id, name: id, value, disabled }, GROUPS.map((g) => el("option", { value: g }, t(`group.${g}`)))));
}

export async function renderUsers(root, ctx) {
  let users;
  try {
    users = await ctx.conn.call({ type: "config/auth/list" });
  } catch (err) {
    root.replaceChildren(el("section", { class: "card" }, el("h1", {}, t("users.title")),
      el("p", { class: "error", role: "alert", id: "users-denied" }, err.code === "unauthorized" ? t("users.admins_only") : commandMessage(err))));
    return;
  }
  users = users.filter((u) => !u.system_generated);
  const summary = await loginSummary(ctx);
  const editor = el("div", { id: "user-editor" });
  const rows = users.map((user) => el("tr", { "data-user-id": user.id },
    el("td", {}, user.name, user.is_owner ? el("span", { class: "tag on" }, t("users.owner")) : ""),
    el("td", {}, user.username || "—"),
    el("td", {}, t(`group.${user.group_ids[0] || "none"}`)),
    el("td", {}, user.is_active ? t("users.active") : t("users.inactive")),
    summaryCells(summary[user.id]),
    el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": t("users.edit_named", { name: user.name }),
      onclick: () => renderEditor(editor, root, ctx, user) }, t("users.edit")))));
  root.replaceChildren(
    el("section", { class: "card" }, el("h1", {}, t("users.title")),
      el("div", { class: "table-wrap" }, el("table", { id: "users-table" },
        el("thead", {}, el("tr", {}, ["users.name", "users.username", "users.group", "users.status", "users.last_sign_in", "users.recent_failures", "users.actions"].map((k) => el("th", { scope: "col" }, t(k))))),
        el("tbody", {}, rows)))),
    editor, createSection(root, ctx));
}

function createSection(root, ctx) {
  const note = status();
  const form = el("form", { novalidate: true, id: "create-user" },
    field("new-name", t("field.name"), "text", "off"),
    field("new-username", t("field.username"), "text", "off"),
    field("new-password", t("field.password"), "password", "new-password"),
    field("new-password-confirm", t("field.password_confirm"), "password", "new-password"),
    groupSelect("new-group", "system-users"), note,
    el("button", { type: "submit" }, t("users.create")));
  const name = form.elements["new-name"];
  const username = form.elements["new-username"];
  let edited = false;
  name.addEventListener("input", () => { if (!edited) username.value = name.value.trim().toLowerCase().replace(/\s+/g, ""); });
  username.addEventListener("input", () => { edited = true; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = { name: name.value.trim(), username: username.value.trim(), password: form.elements["new-password"].value };
    if (!data.name || !data.username || !data.password) { say(note, t("onboarding.fill_all"), true); return; }
    if (data.password !== form.elements["new-password-confirm"].value) { say(note, t("common.passwords_differ"), true); return; }
    let created;
    try {
      created = (await ctx.conn.call({ type: "config/auth/create", name: data.name, group_ids: [form.elements["new-group"].value] })).user;
      await ctx.conn.call({ type: `${LOCAL}/create`, user_id: created.id, username: data.username, password: data.password });
    } catch (err) {
      // A user without the login they asked for is useless: take it back.
      if (created) await ctx.conn.call({ type: "config/auth/delete", user_id: created.id }).catch(() => null);
      say(note, commandMessage(err), true);
      return;
    }
    await renderUsers(root, ctx);
    say(document.querySelector("#create-user .status"), t("users.created", { name: data.name }));
  });
  return el("section", { class: "card", "aria-labelledby": "create-title" }, el("h2", { id: "create-title" }, t("users.add")), form);
}

function renderEditor(editor, root, ctx, user) {
  const note = status();
  const isSelf = user.id === ctx.user.id;
  const form = el("form", { novalidate: true, id: "edit-user" },
    field("edit-name", t("field.name"), "text", "off", user.name),
    groupSelect("edit-group", user.group_ids[0] || "system-users", user.is_owner),
    el("div", { class: "check" }, el("input", { type: "checkbox", id: "edit-active", checked: user.is_active, disabled: user.is_owner || isSelf }),
      el("label", { for: "edit-active" }, t("users.active"))),
    el("button", { type: "submit" }, t("common.save")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = { type: "config/auth/update", user_id: user.id };
    const name = form.elements["edit-name"].value.trim();
    if (name && name !== user.name) message.name = name;
    const group = form.elements["edit-group"].value;
    if (!user.is_owner && group !== user.group_ids[0]) message.group_ids = [group];
    const active = form.elements["edit-active"].checked;
    if (active !== user.is_active) message.is_active = active;
    let updated;
    try { updated = (await ctx.conn.call(message)).user; } catch (err) { say(note, commandMessage(err), true); return; }
    await renderUsers(root, ctx);
    renderEditor(document.getElementById("user-editor"), root, ctx, updated);
    say(document.querySelector("#user-editor .status"), t("users.saved"));
  });

  const passwordForm = el("form", { novalidate: true, id: "user-password" });
  if (!user.username) {
    passwordForm.append(el("p", { class: "muted" }, t("users.no_login")), field("login-username", t("field.username")),
      field("login-password", t("field.password"), "password", "new-password"), el("button", { type: "submit" }, t("users.add_login")));
  } else if (ctx.user.is_owner) {
    passwordForm.append(field("login-password", t("field.new_password"), "password", "new-password"), el("button", { type: "submit" }, t("users.set_password")));
  } else {
    passwordForm.append(el("p", { class: "muted" }, t("users.owner_sets_passwords")));
  }
  passwordForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = passwordForm.elements["login-password"].value;
    if (!password) { say(note, t("onboarding.fill_all"), true); return; }
    try {
      if (user.username) await ctx.conn.call({ type: `${LOCAL}/admin_change_password`, user_id: user.id, password });
      else {
        const username = passwordForm.elements["login-username"].value.trim();
        if (!username) { say(note, t("onboarding.fill_all"), true); return; }
        await ctx.conn.call({ type: `${LOCAL}/create`, user_id: user.id, username, password });
      }
    } catch (err) { say(note, commandMessage(err), true); return; }
    passwordForm.reset();
    if (!user.username) { await renderUsers(root, ctx); return; }
    say(note, t("users.password_set"));
  });

  const remove = user.is_owner || isSelf ? el("p", { class: "muted" }, user.is_owner ? t("users.owner_protected") : t("users.self_protected"))
    : el("button", { type: "button", class: "danger", id: "delete-user", onclick: async () => {
      if (!confirm(t("users.delete_confirm", { name: user.name }))) return;
      try { await ctx.conn.call({ type: "config/auth/delete", user_id: user.id }); } catch (err) { say(note, commandMessage(err), true); return; }
      await renderUsers(root, ctx);
    } }, t("users.delete"));

  editor.replaceChildren(el("section", { class: "card", "aria-labelledby": "edit-title" },
    el("h2", { id: "edit-title" }, t("users.edit_title", { name: user.name })), form,
    el("h3", {}, t("field.password")), passwordForm, note,
    el("div", { class: "actions" }, remove, el("button", { type: "button", class: "secondary", onclick: () => editor.replaceChildren() }, t("common.close")))));
  form.elements["edit-name"].focus();
  // The user's passkeys, when the webauthn plugin is installed: an administrator removes a lost one.
  adminPasskeys(ctx, user).then((box) => { if (box && note.isConnected) note.before(box); });
}
