// Strings: one JSON file per language in /static/i18n/, English as the fallback; the theme.
export const LANGUAGES = { en: "English", de: "Deutsch", fr: "Français" };
export const THEMES = ["system", "light", "dark"];
const THEME_CACHE = "opp_auth_theme";
let strings = {};
let fallback = {};
export let language = "en";

async function load(lang) {
  const response = await fetch(`/static/i18n/${lang}.json`);
  return response.ok ? response.json() : {};
}

export function browserLanguage() {
  for (const tag of navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"]) {
    const base = tag.toLowerCase().split("-")[0];
    if (LANGUAGES[base]) return base;
  }
  return "en";
}

export async function setLanguage(lang) {
  if (!LANGUAGES[lang]) lang = "en";
  if (!Object.keys(fallback).length) fallback = await load("en");
  strings = lang === "en" ? fallback : await load(lang);
  language = lang;
  document.documentElement.lang = lang;
  translateDom(document);
}

export function t(key, vars = {}) {
  const text = strings[key] ?? fallback[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (match, name) => (vars[name] ?? match));
}

// A key's text, or null when no language file has it (for keys built from server error codes).
export function tOptional(key, vars = {}) {
  return key in strings || key in fallback ? t(key, vars) : null;
}

export function translateDom(root) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-label]")) node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  const title = root.querySelector && root.querySelector("title[data-i18n]");
  if (title) document.title = title.textContent;
}

export function applyTheme(theme) {
  if (!THEMES.includes(theme)) theme = "system";
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  localStorage.setItem(THEME_CACHE, theme);
}

// Before the user's settings arrive (and on the login page), use the last theme this browser saw.
export function applyCachedTheme() { applyTheme(localStorage.getItem(THEME_CACHE) || "system"); }

export function formatDate(iso) {
  if (!iso) return t("common.never");
  return new Date(iso).toLocaleString(language, { dateStyle: "medium", timeStyle: "short" });
}
