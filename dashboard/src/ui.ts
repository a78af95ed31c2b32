// A tiny DOM helper: h("div.card", {onclick}, children…). No framework.
type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  spec: K | `${K}.${string}` | `${K}#${string}`, // tag, then any #id and .classes
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const tag = spec.match(/^[a-z0-9]+/)![0];
  const id = spec.match(/#([\w-]+)/)?.[1];
  const classes = [...spec.matchAll(/\.([\w-]+)/g)].map((m) => m[1]);
  const el = document.createElement(tag as K);
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A status line: kind is info | pending | ok | error. */
export function notice(el: Element, kind: "info" | "pending" | "ok" | "error", ...children: Child[]): void {
  el.className = `notice ${kind}`;
  el.setAttribute("data-state", kind);
  clear(el, ...children);
}

export function field(label: string, input: HTMLElement, hint?: string): HTMLLabelElement {
  return h("label.field", {}, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}
