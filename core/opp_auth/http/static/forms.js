// Forms from a flow's serialised data_schema (login and MFA setup), and readable errors.
import { el } from "/static/api.js";
import { t, tOptional } from "/static/i18n.js";

export function fieldLabel(field) {
  return tOptional(`field.${field.name}`) || field.description
    || field.name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

// Any provider's or module's form: the page knows only the schema, not the plugin behind it.
export function renderField(field, prefix = "field") {
  const id = `${prefix}-${field.name}`;
  const common = { id, name: field.name, required: field.required || undefined };
  if (field.type === "boolean") {
    return el("div", { class: "check" },
      el("input", { ...common, type: "checkbox", checked: field.default === true, required: undefined }),
      el("label", { for: id }, fieldLabel(field)));
  }
  let input;
  if (field.type === "select") {
    const options = (field.options || []).map((option) => (Array.isArray(option) ? option : [option, option]));
    input = el("select", { ...common, value: field.default }, options.map(([value, text]) => el("option", { value }, String(text))));
  } else if (field.type === "integer" || field.type === "float") {
    input = el("input", { ...common, type: "number", step: field.type === "float" ? "any" : "1", value: field.default });
  } else {
    const secret = field.name === "password" || field.format === "password";
    const isCode = field.name === "code" || field.name === "pin";
    input = el("input", { ...common, type: secret ? "password" : "text", value: field.default,
      autocomplete: secret ? "current-password" : field.name === "username" ? "username" : isCode ? "one-time-code" : "off",
      inputmode: isCode ? "numeric" : undefined, autocapitalize: "off", spellcheck: "false" });
  }
  return el("div", { class: "field" }, el("label", { for: id }, fieldLabel(field)), input);
}

export function readForm(form, schema) {
  const data = {};
  for (const field of schema) {
    const input = form.elements[field.name];
    if (field.type === "boolean") data[field.name] = input.checked;
    else if (field.type === "integer") data[field.name] = parseInt(input.value, 10);
    else if (field.type === "float") data[field.name] = parseFloat(input.value);
    else data[field.name] = input.value;
  }
  return data;
}

// A flow error key (SPEC's invalid_auth, invalid_code, ...) as a sentence.
export function flowMessage(key) { return tOptional(`error.${key}`) || key; }

// A websocket command error as a sentence: ours when we know the code, else the server's message.
export function commandMessage(err) {
  return (err && err.code && tOptional(`ws.${err.code}`)) || (err && err.message) || t("error.unknown_error");
}
