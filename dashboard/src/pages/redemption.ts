// Redemption: the wallet's linked AI accounts with their balances (the server asks the
// provider's billing API; the credential never leaves it), the agent grant read from
// RedemptionEscrow (scope, daily limits, spent today, expiry) with grant and revoke
// signed by the wallet, auto-topup rules, and the redemption history with receipts.
import { maxUint256, zeroAddress, type Address, type Hex } from "viem";
import { erc20Abi, redemptionAbi } from "../abi";
import { api, apiKey, type AssetInfo, type LinkedAccount, type RedemptionView } from "../api";
import { send } from "../chain";
import { parseAmount, short } from "../format";
import { money, usdText } from "../money";
import { loadPrices } from "../prices";
import type { App, Page } from "../main";
import { clear, h, notice } from "../ui";
import { walletGate } from "../wallet";
import { drawKey } from "./utilize";

const DAY = 86_400n;

function usd(micro: number | null | undefined): string {
  return micro === null || micro === undefined ? "—" : usdText(BigInt(micro));
}

function when(seconds: number | bigint): string {
  return new Date(Number(seconds) * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

export const redemptionPage: Page = (root, app) => {
  const { ctx, wallet } = app;
  root.append(h("h1", {}, "Redemption"));
  const escrow = ctx.config.contracts.RedemptionEscrow;
  if (!escrow) return void root.append(h("p.notice.error", {}, "This chain has no RedemptionEscrow deployed."));
  const gate = walletGate(wallet, ctx);
  if (gate) return void root.append(gate);
  const body = h("div");
  root.append(body);
  if (!apiKey()) {
    const keyBox = h("div.card#key-box");
    body.append(h("p.notice.info", {}, "Your linked accounts, rules and history are private: get an API key by signing with your wallet (no transaction)."), keyBox);
    drawKey(keyBox, app, () => app.refresh());
    return;
  }
  void draw(body, app, escrow);
};

async function draw(body: HTMLElement, app: App, escrow: Address): Promise<void> {
  const { wallet } = app;
  const account = wallet.account!;
  let view: RedemptionView;
  try {
    view = await api.redemption(account);
  } catch (err) {
    return notice(body, "error", `Cannot read your redemption records: ${(err as Error).message}`);
  }
  const agent = view.agent;
  const accountsBox = h("div.card#linked-accounts");
  const grantBox = h("div.card#grant");
  const rulesBox = h("div.card#rules");
  const historyBox = h("div.card#history");
  clear(
    body,
    h(
      "p.muted",
      {},
      "The redemption agent ",
      agent ? h("code#agent", { title: agent }, short(agent)) : "(none configured)",
      " sells the provider tokens you grant it into RedemptionEscrow, buys credit on your linked account, and is paid in USDC only against the provider's signed receipt; a redemption it cannot finish refunds to you after its deadline.",
    ),
    accountsBox,
    grantBox,
    rulesBox,
    historyBox,
  );
  const reload = () => void draw(body, app, escrow);
  await Promise.all([
    drawAccounts(accountsBox, app, escrow, view.accounts, reload),
    agent ? drawGrant(grantBox, app, escrow, agent, reload) : notice(grantBox, "error", "No agent is configured on this server."),
  ]);
  drawRules(rulesBox, app, view, reload);
  const refreshHistory = async (): Promise<void> => {
    const fresh = await api.redemption(account).catch(() => null);
    if (fresh) drawHistory(historyBox, fresh, refreshHistory);
  };
  drawHistory(historyBox, view, refreshHistory);
}

async function drawAccounts(box: HTMLElement, app: App, escrow: Address, accounts: LinkedAccount[], reload: () => void): Promise<void> {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  const status = h("div#link-status.notice", { role: "status" });
  const linkForm = drawLinkForm(app, status, reload);
  if (!accounts.length) {
    return clear(box, h("h2", {}, "Linked AI accounts"), h("p.muted", {}, "None yet: link your account at a provider below, then confirm it on chain."), linkForm, status);
  }
  const onChain = await Promise.all(
    accounts.map((a) => ctx.client.readContract({ address: escrow, abi: redemptionAbi, functionName: "linked_account", args: [account, a.provider_id] })),
  );
  const rows = accounts.map((a, i) => {
    const linked = onChain[i].toLowerCase() === a.account_ref.toLowerCase();
    return h(
      "tr",
      { "data-linked": a.provider },
      h("th", {}, a.provider),
      h("td", {}, h("code", {}, a.account_id)),
      h(
        "td.num",
        { "data-balance": a.provider },
        usd(a.balance_usd_micro),
        a.balance_live ? "" : h("small", { title: a.balance_error ?? "" }, " (last known)"),
      ),
      h(
        "td",
        { "data-onchain": a.provider },
        linked
          ? h("span.badge.ok", {}, "linked on chain")
          : h(
              "button",
              {
                "data-action": "link",
                "data-provider": a.provider,
                onclick: async () => {
                  const ok = await send(ctx, wallet.client!, account, status, `Link your ${a.provider} account`, {
                    address: escrow,
                    abi: redemptionAbi,
                    functionName: "link_account",
                    args: [a.provider_id, a.account_ref],
                  });
                  if (ok) reload();
                },
              },
              "Link on chain",
            ),
      ),
    );
  });
  clear(
    box,
    h("h2", {}, "Linked AI accounts"),
    h("table#accounts-table", {}, h("thead", {}, h("tr", {}, ...["Provider", "Account", "Balance", "On chain"].map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)),
    h("p.muted", {}, "Balances come from the provider's billing API through the server; the billing credential stays sealed there. Redemptions buy credit only on the account linked on chain."),
    linkForm,
    status,
  );
}

/** Link (or re-link) an account: the server checks the scoped credential with the billing API and seals it. */
function drawLinkForm(app: App, status: HTMLElement, reload: () => void): HTMLElement {
  const providers = [...new Set(app.ctx.assets.filter((a) => a.kind === "provider" && a.provider).map((a) => a.provider!.toLowerCase()))];
  const provider = h("select#link-provider", {}, ...providers.map((p) => h("option", { value: p }, p)));
  const accountId = h("input#link-account-id", { placeholder: "account id at the provider", size: 22, autocomplete: "off" });
  const credential = h("input#link-credential", { type: "password", placeholder: "scoped billing credential", size: 26, autocomplete: "off" });
  const link = async (): Promise<void> => {
    notice(status, "pending", "Checking the credential with the provider's billing API…");
    try {
      const linked = await api.linkAccount({ wallet: app.wallet.account!, provider: provider.value, account_id: accountId.value, credential: credential.value });
      credential.value = ""; // sealed on the server now
      notice(status, "ok", `Linked ${linked.provider} account ${linked.account_id} (balance ${usd(linked.balance_usd_micro)}): confirm it on chain.`);
      reload();
    } catch (err) {
      notice(status, "error", `${(err as Error).message.replace(/^./, (c) => c.toUpperCase())}. Nothing was stored.`);
    }
  };
  return h(
    "div.row#link-form",
    {},
    h("label", {}, "Link ", provider),
    accountId,
    credential,
    h("button#link-account", { onclick: () => void link() }, "Link account"),
    h("small.muted", {}, "A credential scoped to adding credit, not an API key."),
  );
}

async function drawGrant(box: HTMLElement, app: App, escrow: Address, agent: Address, reload: () => void): Promise<void> {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  const client = wallet.client!;
  const tokens = ctx.assets.filter((a) => a.kind === "provider");
  const [grant, limits, spent, block, prices] = await Promise.all([
    ctx.client.readContract({ address: escrow, abi: redemptionAbi, functionName: "grant", args: [account, agent] }),
    Promise.all(tokens.map((t) => ctx.client.readContract({ address: escrow, abi: redemptionAbi, functionName: "daily_limit", args: [account, agent, t.address] }))),
    Promise.all(tokens.map((t) => ctx.client.readContract({ address: escrow, abi: redemptionAbi, functionName: "spent_today", args: [account, agent, t.address] }))),
    ctx.client.getBlock({ blockTag: "latest" }),
    loadPrices(ctx),
  ]);
  const [payee, expiry, slippageBps, version] = grant;
  const live = payee !== zeroAddress;
  const expired = live && expiry < block.timestamp;
  const state = !live ? (version > 0n ? "revoked" : "none") : expired ? "expired" : "active";
  const status = h("div#grant-status.notice", { role: "status" });
  const granted = tokens.map((t, i) => ({ token: t, limit: limits[i], spent: spent[i] })).filter((g) => g.limit > 0n);

  const tokenSel = h("select#grant-token", {}, ...tokens.map((t) => h("option", { value: t.symbol }, t.symbol)));
  const limitIn = h("input#grant-limit", { value: "10000", size: 10, inputmode: "decimal" });
  const slippageIn = h("input#grant-slippage", { value: "5", size: 4, inputmode: "decimal" });
  const daysIn = h("input#grant-days", { value: "30", size: 4, inputmode: "numeric" });

  async function doGrant(): Promise<void> {
    const token = ctx.asset(tokenSel.value);
    let limit: bigint;
    let bps: bigint;
    let days: bigint;
    try {
      limit = parseAmount(limitIn.value, token.decimals, token.symbol);
      bps = parseAmount(slippageIn.value, 2, "Slippage (%)", true); // percent to two decimals: exactly basis points
      if (bps > 5_000n) throw new Error("Slippage is a percentage between 0 and 50");
      const d = Number(daysIn.value);
      if (!(Number.isInteger(d) && d >= 1 && d <= 3650)) throw new Error("The grant lasts 1 to 3650 days");
      days = BigInt(d);
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    const now = (await ctx.client.getBlock({ blockTag: "latest" })).timestamp;
    const ok = await send(ctx, client, account, status, `Grant the agent ${money(limit, token.symbol)} a day`, {
      address: escrow,
      abi: redemptionAbi,
      functionName: "set_grant",
      args: [agent, agent, now + days * DAY, bps, [token.address], [limit]],
    });
    if (!ok) return;
    await approveEscrow(token, limit);
  }

  async function approveEscrow(token: AssetInfo, limit: bigint): Promise<void> {
    // The escrow, not the agent, pulls the tokens; the grant's daily limits bound it (as `promptex wallet grant-agent`).
    const allowance = await ctx.client.readContract({ address: token.address, abi: erc20Abi, functionName: "allowance", args: [account, escrow] });
    if (allowance < limit) {
      const ok = await send(ctx, client, account, status, `Let RedemptionEscrow move your ${token.symbol} (within the grant)`, {
        address: token.address,
        abi: erc20Abi,
        functionName: "approve",
        args: [escrow, maxUint256],
      });
      if (!ok) return;
    }
    reload();
  }

  const revoke = h(
    "button.secondary#revoke-grant",
    {
      disabled: !live,
      onclick: async () => {
        const ok = await send(ctx, client, account, status, "Revoke the agent's grant", { address: escrow, abi: redemptionAbi, functionName: "revoke_grant", args: [agent] });
        if (ok) reload();
      },
    },
    "Revoke",
  );
  clear(
    box,
    h("h2", {}, "Agent grant"),
    h(
      "p",
      {},
      "State: ",
      h("strong", { "data-grant-state": state }, state),
      live ? ` · payee ${short(payee)} · at most ${Number(slippageBps) / 100} % under the TWAP · expires ${when(expiry)} · version ${version} ` : " ",
      revoke,
    ),
    granted.length
      ? h(
          "table#grant-table",
          {},
          h("thead", {}, h("tr", {}, ...["Token", "Daily limit", "Sold today", "Left today"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            ...granted.map((g) =>
              h(
                "tr",
                { "data-grant": g.token.symbol },
                h("th", {}, g.token.symbol),
                h("td.num", { "data-grant-limit": g.token.symbol }, prices.money(g.limit, g.token.symbol, { symbol: false })),
                h("td.num", { "data-grant-spent": g.token.symbol }, prices.money(g.spent, g.token.symbol, { symbol: false })),
                h("td.num", {}, prices.balance(g.limit > g.spent ? g.limit - g.spent : 0n, g.token.symbol, { symbol: false })),
              ),
            ),
          ),
        )
      : h("p.muted", {}, live ? "" : "The agent may sell none of your tokens."),
    h("h3", {}, live ? "Replace the grant" : "Grant the agent"),
    h(
      "div.row",
      {},
      h("label", {}, "Token ", tokenSel),
      h("label", {}, "Daily limit ", limitIn),
      h("label", {}, "Slippage % ", slippageIn),
      h("label", {}, "Days ", daysIn),
      h("button#grant-button", { onclick: () => void doGrant() }, "Grant"),
    ),
    h("p.muted", {}, "Two signatures: the grant (a new one replaces the old as a whole), then an approval of RedemptionEscrow for the token, which only a live grant's daily limit lets it use. Revoking stops new redemptions at once; open ones still release or refund."),
    status,
  );
}

function drawRules(box: HTMLElement, app: App, view: RedemptionView, reload: () => void): void {
  const { ctx, wallet } = app;
  const status = h("div#rule-status.notice", { role: "status" });
  const providers = view.accounts.map((a) => a.provider);
  const providerSel = h("select#rule-provider", {}, ...providers.map((p) => h("option", { value: p }, p)));
  const tokenSel = h("select#rule-token", {}, ...ctx.assets.filter((a) => a.kind === "provider").map((t) => h("option", { value: t.symbol }, t.symbol)));
  const below = h("input#rule-below", { value: "20", size: 6, inputmode: "decimal" });
  const add = h("input#rule-add", { value: "20", size: 6, inputmode: "decimal" });
  const max = h("input#rule-max", { value: "10000", size: 8, inputmode: "decimal" });
  const rows = view.rules.map((r) =>
    h(
      "tr",
      { "data-rule": String(r.id) },
      h("td", {}, String(r.id)),
      h("td", {}, `${r.provider} below ${usd(r.below_usd_micro)} → add ${usd(r.add_usd_micro)}, selling at most ${money(BigInt(r.max_tokens_in), r.token)}`),
      h("td", { "data-rule-state": String(r.id) }, r.enabled ? "on" : "off"),
      h("td.muted", { "data-rule-outcome": String(r.id) }, r.last_outcome ?? "not checked yet"),
      h("td", {}, h("button.secondary", { "data-action": "switch-rule", "data-rule": String(r.id), onclick: () => void switchRule(r.id, !r.enabled) }, r.enabled ? "Switch off" : "Switch on")),
    ),
  );
  async function switchRule(id: number, enabled: boolean): Promise<void> {
    notice(status, "pending", `Switching rule ${id} ${enabled ? "on" : "off"}…`);
    try {
      await api.switchRule(wallet.account!, id, enabled);
      notice(status, "ok", enabled ? `Rule ${id} is on; the agent checks it on its next pass.` : `Rule ${id} is off; the agent no longer checks it.`);
      reload();
    } catch (err) {
      notice(status, "error", `Rule ${id} was not changed: ${(err as Error).message}`);
    }
  }
  async function addRule(): Promise<void> {
    if (!providers.length) return notice(status, "error", "Link an AI account first: a rule tops one up.");
    notice(status, "pending", "Saving the rule…");
    try {
      const rule = await api.addRule({ wallet: wallet.account!, provider: providerSel.value, token: tokenSel.value, below_usd: below.value, add_usd: add.value, max_tokens: max.value });
      notice(status, "ok", `Rule ${rule.id} saved; the agent checks it on its next pass.`);
      reload();
    } catch (err) {
      notice(status, "error", `The rule was not saved: ${(err as Error).message}`);
    }
  }
  clear(
    box,
    h("h2", {}, "Auto-topup rules"),
    rows.length
      ? h("table#rules-table", {}, h("thead", {}, h("tr", {}, ...["#", "Rule", "State", "Last check", ""].map((t) => h("th", {}, t)))), h("tbody", {}, ...rows))
      : h("p.muted", {}, "No rules."),
    h(
      "div.row",
      {},
      h("label", {}, "When ", providerSel),
      h("label", {}, "is below $", below),
      h("label", {}, "add $", add),
      h("label", {}, "selling at most ", max),
      tokenSel,
      h("button#add-rule", { onclick: () => void addRule() }, "Add rule"),
    ),
    h("p.muted", {}, "A rule fires only within the grant: its daily limit and slippage bound the sale."),
    status,
  );
}

function drawHistory(box: HTMLElement, view: RedemptionView, refresh: () => Promise<void>): void {
  const txLink = (hash: Hex | null, label: string) => (hash ? h("div", {}, `${label} `, h("code", { title: hash }, short(hash, 8, 6))) : null);
  const rows = view.redemptions.map((r) =>
    h(
      "tr",
      { "data-redemption": String(r.id) },
      h("td", {}, String(r.id)),
      h("td", {}, when(r.created_at)),
      h("td.num", { "data-sold": String(r.id) }, r.tokens_in === null ? "—" : money(BigInt(r.tokens_in), r.token)),
      h("td", {}, r.provider, r.rule_id ? h("small", {}, ` (rule ${r.rule_id})`) : ""),
      h("td.num", { "data-usd": String(r.id) }, usd(r.receipt_usd_micro ?? r.usd_micro)),
      h("td", { "data-redemption-status": String(r.id), title: r.error ?? "" }, r.status, r.error && r.status !== "released" ? h("div.muted", {}, r.error) : null),
      h("td", { "data-billing-ref": String(r.id) }, r.billing_ref ? h("code", { title: r.billing_ref }, short(r.billing_ref, 8, 6)) : "—"),
      h("td", {}, txLink(r.redeem_tx, "sold"), txLink(r.release_tx, "released")),
    ),
  );
  clear(
    box,
    h("h2", {}, "Redemption history ", h("button.secondary#refresh-redemptions", { onclick: () => void refresh() }, "Refresh")),
    rows.length
      ? h(
          "table#redemptions-table",
          {},
          h("thead", {}, h("tr", {}, ...["#", "Date", "Sold", "To", "USD", "Status", "Billing receipt", "Transactions"].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...rows),
        )
      : h("p.muted", {}, "No redemptions yet."),
  );
}
