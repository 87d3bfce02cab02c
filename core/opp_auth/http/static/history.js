// Login history: the profile's "Recent sign-ins" (auth/login_history) and the users page's summary cells.
// Every client-supplied string (address, client id, user agent, username) is set as text, never as HTML,
// with control, bidi and invisible characters shown as U+FFFD and long values cut (the full text in a title).
import { el } from "/static/api.js";
import { formatDate, t, tOptional } from "/static/i18n.js";
import { commandMessage } from "/static/forms.js";

const PAGE = 20;
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]/g;

export function clean(text) { return String(text ?? "").replace(UNSAFE, "\ufffd"); }

export function short(text, max = 60) {
  const value = clean(text);
  return value.length > max ? `${value.slice(0, max - 1)}…` : value;
}

function textCell(text, max, className = undefined) {
  if (!text) return el("span", { class: "muted" }, "—");
  const value = clean(text);
  return el("span", { class: className, title: value.length > max ? value : undefined }, short(value, max));
}

function reasonText(reason) {
  return reason ? tOptional(`history.reason.${reason}`) ?? short(reason, 40) : "";
}

function resultCell(entry) {
  if (!entry.success) return el("span", { class: "tag bad" }, t("history.failure"), reasonText(entry.reason) ? `: ${reasonText(entry.reason)}` : "");
  const flags = [];
  if (entry.new_client) flags.push(el("span", { class: "tag warn new-client" }, t("history.new_client")));
  if (entry.new_network) flags.push(el("span", { class: "tag warn new-network" }, t("history.new_network")));
  if (entry.first_sign_in) flags.push(el("span", { class: "tag" }, t("history.first")));
  return el("span", {}, el("span", { class: "tag on" }, t("history.success")), el("br"), flags);
}

function row(entry) {
  const provider = entry.provider ? entry.provider.id ? `${entry.provider.type} (${entry.provider.id})` : entry.provider.type : "";
  return el("tr", { "data-entry-id": entry.id, class: entry.success ? "ok" : "failed" },
    el("td", { class: "when" }, formatDate(entry.time)),
    el("td", {}, resultCell(entry)),
    el("td", { class: "address" }, textCell(entry.remote_address, 45)),
    el("td", { class: "client" }, textCell(entry.client_id, 60), el("br"), textCell(entry.user_agent, 80, "muted agent")),
    el("td", {}, textCell(provider, 40), entry.username ? el("span", { class: "muted" }, " · ", short(entry.username, 40)) : ""),
    el("td", {}, entry.mfa_module ? short(entry.mfa_module, 40) : el("span", { class: "muted" }, "—")));
}

// The profile section; command: auth/login_history (own) or config/auth/login_history (with user_id).
export function signInsSection(ctx, section, command = "auth/login_history", extra = {}) {
  const body = el("div", { class: "body" });
  const node = section("sign-ins", t("profile.sign_ins"), el("p", { class: "muted" }, t("profile.sign_ins_help")), body);
  loadSignIns(ctx, body, command, extra);
  return node;
}

async function loadSignIns(ctx, body, command, extra) {
  const tbody = el("tbody");
  const note = el("p", { class: "status", role: "status" });
  const more = el("button", { type: "button", class: "secondary", id: "sign-ins-more", hidden: true }, t("history.more"));
  let cursor = null;
  const fetchPage = async () => {
    let page;
    try {
      page = await ctx.conn.call({ type: command, limit: PAGE, ...extra, ...(cursor ? { before: cursor } : {}) });
    } catch (err) { note.textContent = commandMessage(err); note.classList.add("error"); return; }
    tbody.append(...page.entries.map(row));
    cursor = page.next;
    more.hidden = !cursor;
    if (!tbody.children.length) note.textContent = t("profile.sign_ins_none");
  };
  more.addEventListener("click", fetchPage);
  body.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "sign-ins-table", class: "history" },
    el("thead", {}, el("tr", {}, ["history.time", "history.result", "history.address", "history.client", "history.provider", "history.mfa"]
      .map((key) => el("th", { scope: "col" }, t(key))))), tbody)), more, note);
  await fetchPage();
}

// The users page: every user's last sign-in and recent failures ({} when the command is unavailable).
export async function loginSummary(ctx) {
  try { return await ctx.conn.call({ type: "config/auth/login_summary" }); } catch (err) { return {}; }
}

export function summaryCells(summary) {
  const last = summary && summary.last_sign_in;
  const failures = summary ? summary.recent_failures : 0;
  return [
    el("td", { class: "last-sign-in" }, last ? formatDate(last.time) : t("common.never"),
      last && last.remote_address ? el("span", { class: "muted" }, " · ", short(last.remote_address, 45)) : ""),
    el("td", { class: "recent-failures" }, failures ? el("span", { class: "tag bad" }, String(failures)) : "0"),
  ];
}
