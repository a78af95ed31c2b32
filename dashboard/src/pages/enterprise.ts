// Enterprise desk: the org's vault balances, its members with their API keys (prefixes
// only), per-member and per-key budgets, usage by member, and a new member key (shown
// once). Only the org's owner sees it: a key of the org account itself, obtained by
// signing with the wallet bound to the org.
import { api, apiKey, type OrgDesk } from "../api";
import { loadPrices } from "../prices";
import type { App, Page } from "../main";
import { clear, h, notice } from "../ui";
import { drawKey } from "./utilize";

export const enterprisePage: Page = (root, app) => {
  root.append(h("h1", {}, "Enterprise desk"));
  const keyBox = h("div.card#key-box");
  const desk = h("div#desk");
  root.append(desk);
  if (!apiKey()) {
    root.append(
      h("p.notice.info", {}, "The desk shows to the org's owner: get a key by signing with the wallet bound to the org account (no transaction)."),
      keyBox,
    );
    drawKey(keyBox, app, () => app.refresh());
    return;
  }
  void draw(desk, app, h("div#member-status.notice", { role: "status" }));
};

async function draw(box: HTMLElement, app: App, status: HTMLElement): Promise<void> {
  let org: OrgDesk;
  try {
    org = await api.org();
  } catch (err) {
    box.append(h("div#desk-error.notice.error", { "data-state": "error" }, `The desk is not available: ${(err as Error).message}`));
    return;
  }
  const prices = await loadPrices(app.ctx);
  const amount = (value: string, symbol: string) => prices.money(value, symbol);
  const left = (value: string, symbol: string) => prices.balance(value, symbol); // budgets left: rounded down
  const vaultRows = Object.entries(org.vault)
    .filter(([, b]) => b.posted !== "0" || b.held !== "0")
    .map(([symbol, b]) =>
      h("tr", { "data-org-asset": symbol }, h("th", {}, symbol), h("td.num", { "data-org-spendable": symbol, "data-units": b.spendable }, prices.balance(b.spendable, symbol, { symbol: false })), h("td.num", {}, prices.balance(b.held, symbol, { symbol: false }))),
    );
  const total = prices.total(Object.entries(org.vault).map(([symbol, b]) => ({ amount: BigInt(b.posted), symbol })));
  const memberRows = org.members.map((m) =>
    h(
      "tr",
      { "data-member": String(m.account) },
      h("td", {}, m.name ?? `account ${m.account}`, h("small", {}, ` #${m.account}`)),
      h("td", { "data-member-keys": String(m.account) }, ...m.keys.map((k) => h("div", {}, h("code", {}, `${k.prefix}…`), k.revoked ? " (revoked)" : "", k.budget_remaining !== null ? ` key budget ${left(k.budget_remaining, k.budget_asset ?? "USDC")}` : ""))),
      h("td", { "data-member-budget": String(m.account) }, m.budgets.length ? m.budgets.map((b) => `${left(b.remaining, b.asset)} left`).join(", ") : "org balance"),
      h(
        "td.num",
        { "data-member-usage": String(m.account) },
        m.usage.length ? m.usage.map((u) => `${u.requests} req · ${u.tokens.toLocaleString("en-US")} tokens · ${amount(u.cost, u.asset)}`).join("; ") : "—",
      ),
    ),
  );
  const name = h("input#member-name", { placeholder: "name (optional)", size: 16 });
  const budgetAsset = h("select#member-budget-asset", {}, ...app.ctx.assets.map((a) => h("option", { value: a.symbol }, a.symbol)));
  const budget = h("input#member-budget", { placeholder: "no limit", size: 10, inputmode: "decimal" });
  async function addMember(): Promise<void> {
    notice(status, "pending", "Creating the member and its key…");
    try {
      const made = await api.addMember({ name: name.value.trim() || undefined, budget_asset: budgetAsset.value, budget: budget.value.trim() || undefined });
      notice(status, "ok", `Member ${made.account} added. Its key (shown once — hand it over now; only its prefix is kept): `, h("code#member-key", {}, made.key));
      await draw(box, app, status);
    } catch (err) {
      notice(status, "error", (err as Error).message);
    }
  }
  clear(
    box,
    h("p", {}, "Org ", h("strong#org-name", {}, org.name ?? `#${org.org}`), ` (account ${org.org})`, org.wallets.length ? h("span.muted", {}, ` · wallet ${org.wallets.join(", ")}`) : ""),
    h("h2", {}, "Org vault"),
    vaultRows.length
      ? h("table#org-vault", {}, h("thead", {}, h("tr", {}, h("th", {}, "Asset"), h("th", {}, "Spendable"), h("th", {}, "Held by running requests"))), h("tbody", {}, ...vaultRows), h("tfoot", {}, h("tr", {}, h("th", {}, "Total"), h("td#org-total", { colspan: 2, "data-usd-micro": total.usd.toString() }, total.text))))
      : h("p.muted", {}, "Nothing deposited yet: deposit from the org's wallet on the Portfolio page."),
    h("h2", {}, "Members, keys, budgets and usage"),
    memberRows.length
      ? h("table#members", {}, h("thead", {}, h("tr", {}, ...["Member", "API keys", "Budget at the org", "Usage"].map((t) => h("th", {}, t)))), h("tbody", {}, ...memberRows))
      : h("p.muted", {}, "No members yet."),
    h("h3", {}, "Add a member"),
    h("div.row", {}, name, h("label", {}, "budget ", budget), budgetAsset, h("button#add-member", { onclick: () => void addMember() }, "Create member key")),
    status,
  );
}
