// The signed-in pages (/, /profile, /users): finish a login redirect, connect the websocket, route.
import { Connection, accessToken, clearTokens, exchangeCode, getJSON, loginUrl, el } from "/static/api.js";
import { applyCachedTheme, applyTheme, browserLanguage, setLanguage, t } from "/static/i18n.js";
import { renderProfile } from "/static/profile.js";
import { renderUsers } from "/static/users.js";

const content = document.getElementById("content");

export function initials(name) {
  const words = (name || "?").trim().split(/\s+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || "?").slice(0, 2)).toUpperCase();
}

function renderHome(root, ctx) {
  root.replaceChildren(el("section", { class: "card" },
    el("h1", {}, t("home.welcome", { name: ctx.user.name || "" })),
    el("p", { id: "status" }, t("home.logged_in")),
    el("ul", { class: "links" },
      el("li", {}, el("a", { href: "/profile" }, t("nav.profile"))),
      ctx.user.is_admin ? el("li", {}, el("a", { href: "/users" }, t("nav.users"))) : null)));
}

const PAGES = { "/": renderHome, "/profile": renderProfile, "/users": renderUsers };

function renderShell(ctx) {
  const badge = document.getElementById("badge");
  badge.textContent = initials(ctx.user.name);
  badge.setAttribute("aria-label", t("nav.profile_of", { name: ctx.user.name || "" }));
  badge.title = ctx.user.name || "";
  badge.hidden = false;
  const links = [["/", "nav.home"], ["/profile", "nav.profile"]];
  if (ctx.user.is_admin) links.push(["/users", "nav.users"]);
  document.getElementById("nav").replaceChildren(el("ul", {}, links.map(([href, key]) =>
    el("li", {}, el("a", { href, "aria-current": location.pathname === href ? "page" : undefined }, t(key))))));
}

async function render(ctx) {
  renderShell(ctx);
  const page = PAGES[location.pathname];
  document.title = `${t(page ? `title.${location.pathname}` : "title.not_found")} - Open Peer Power`;
  if (!page) { content.replaceChildren(el("section", { class: "card" }, el("p", {}, t("common.not_found")))); return; }
  await page(content, ctx);
}

async function main() {
  applyCachedTheme();
  const params = new URLSearchParams(location.search);
  if (params.has("auth_callback") && params.has("code")) {
    try { await exchangeCode(params.get("code")); } catch (err) {
      await setLanguage(browserLanguage());
      content.replaceChildren(el("p", { class: "error", role: "alert" }, err.message), el("a", { href: loginUrl("/") }, t("login.start_over")));
      return;
    }
    const target = params.get("state");
    history.replaceState(null, "", target && target.startsWith("/") && !target.startsWith("//") ? target : "/");
  }
  const onboarding = await getJSON("/api/onboarding");
  const userStep = (onboarding.body || []).find((step) => step.step === "user");
  if (userStep && !userStep.done) { location.assign("/onboarding.html"); return; }
  const token = await accessToken();
  if (!token) { location.assign(loginUrl()); return; }
  let conn;
  try { conn = await Connection.open(token); } catch (err) {
    if (err.code === "auth_invalid") { clearTokens(); location.assign(loginUrl()); return; }
    await setLanguage(browserLanguage());
    content.replaceChildren(el("p", { class: "error", role: "alert" }, t("error.cannot_connect")));
    return;
  }
  const user = await conn.call({ type: "auth/current_user" });
  const settings = (await conn.call({ type: "frontend/get_user_data" })).value || {};
  await setLanguage(settings.language || browserLanguage());
  applyTheme(settings.theme || "system");
  const ctx = { conn, user, settings };
  ctx.rerender = () => render(ctx);
  ctx.reloadUser = async () => { ctx.user = await conn.call({ type: "auth/current_user" }); };
  // The server closes the socket when this session's token is deleted or the user deactivated.
  conn.onclose = async () => {
    const fresh = await accessToken();
    if (!fresh) { location.assign(loginUrl()); return; }
    content.prepend(el("p", { class: "error", role: "alert" }, t("common.connection_lost"), " ",
      el("button", { type: "button", class: "link", onclick: () => location.reload() }, t("common.reload"))));
  };
  await render(ctx);
}

main();
