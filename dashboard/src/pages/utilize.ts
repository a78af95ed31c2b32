// Utilize: a prompt playground over the gateway's /v1 — an API key (pasted, or obtained by
// signing with the wallet), the spend cap the vault needs, a model and the asset to pay
// with, the estimated cost before sending, the streamed answer, then the metered cost
// and the balance after, both read back from the ledger.
import { maxUint256, type Hex } from "viem";
import { vaultAbi } from "../abi";
import { api, apiKey, setApiKey, type AccountView } from "../api";
import { explain, send } from "../chain";
import { parseAmount, short } from "../format";
import { balance, money } from "../money";
import { loadPrices } from "../prices";
import { MAX_RATE_HEADER, playgroundPrice, type ModelInfo } from "../hold";
import {
  forgetTabSession, keepTabSession, sessionAccount, sessionExpiry, sessionKeyTypedData, sessionMaximum, SESSION_DEFAULT_USD_MICRO,
  tabSession, voucherFor, VOUCHER_HEADER, type LanesReport,
} from "../signed";
import { generatePrivateKey } from "viem/accounts";
import type { App, Page } from "../main";
import { clear, h, notice } from "../ui";

async function models(): Promise<ModelInfo[]> {
  const response = await fetch("/v1/models", { headers: { authorization: `Bearer ${apiKey()}` } });
  const body = await response.json();
  if (!response.ok) throw new Error(body?.error?.message ?? response.statusText);
  return body.data as ModelInfo[];
}

const MAX_CAP_TOTAL = 2n ** 96n - 1n; // CreditsVault.MAX_CAP_TOTAL: a total cap this large is no limit
export const utilizePage: Page = (root, app) => {
  const keyBox = h("div.card#key-box");
  const accountBox = h("div.card#account-box");
  const playground = h("div.card#playground");
  root.append(h("h1", {}, "Utilize"), keyBox, accountBox, playground);
  drawKey(keyBox, app, () => {
    void drawAccount(accountBox, app);
    void drawPlayground(playground, app, accountBox);
  });
  if (apiKey()) {
    void drawAccount(accountBox, app);
    void drawPlayground(playground, app, accountBox);
  } else {
    accountBox.replaceChildren(h("p.muted", {}, "Balances show once you use an API key."));
  }
};

/** The API key box: paste a key, or get one by signing the wallet binding (shared by the pages that need a key). */
export function drawKey(box: HTMLElement, app: App, changed: () => void): void {
  const input = h("input#api-key", { type: "password", placeholder: "px-…", size: 40, autocomplete: "off" });
  const status = h("div#key-status.notice", { role: "status" });
  const current = apiKey();
  const use = h("button#use-key", { onclick: () => {
    if (!input.value.trim()) return notice(status, "error", "Paste a key first.");
    setApiKey(input.value);
    input.value = "";
    notice(status, "ok", "Key saved for this tab.");
    changed();
  } }, "Use this key");
  const obtain = h("button#get-key", { onclick: () => void getKey() }, "Get a key with my wallet");

  async function getKey(): Promise<void> {
    const account = app.wallet.account;
    const client = app.wallet.client;
    if (!account || !client) return notice(status, "error", "Connect your wallet (on the right network) first.");
    try {
      notice(status, "pending", "Asking the server for a binding message…");
      const challenge = await api.challenge(account);
      notice(status, "pending", "Sign the message in your wallet: it proves this wallet is yours (no transaction, no gas).");
      const td = challenge.typed_data;
      const types = Object.fromEntries(Object.entries(td.types).filter(([name]) => name !== "EIP712Domain"));
      const signature: Hex = await client.signTypedData({
        account,
        domain: td.domain,
        types,
        primaryType: td.primaryType,
        message: td.message,
      } as Parameters<typeof client.signTypedData>[0]);
      const issued = await api.bind(challenge.binding, signature);
      setApiKey(issued.key);
      notice(
        status,
        "ok",
        `Wallet bound to account ${issued.account}. Your new key (shown once — copy it now; this tab keeps it until closed): `,
        h("code#new-key", {}, issued.key),
      );
      changed();
    } catch (err) {
      notice(status, "error", explain(err).replace("The transaction would fail: ", "Could not get a key: "));
    }
  }

  clear(
    box,
    h("h2", {}, "API key"),
    current ? h("p", {}, "Using key ", h("code", {}, short(current, 8, 4)), " ", h("button.secondary", { onclick: () => { setApiKey(null); location.reload(); } }, "Forget")) : null,
    h("div.row", {}, input, use, h("span.muted", {}, "or"), obtain),
    status,
  );
}

async function drawAccount(box: HTMLElement, app: App): Promise<AccountView | null> {
  let view: AccountView;
  try {
    view = await api.account();
  } catch (err) {
    notice(box, "error", (err as Error).message);
    return null;
  }
  box.className = "card";
  const prices = await loadPrices(app.ctx);
  const rows = app.ctx.assets.map((a) => {
    const b = view.balances[a.symbol];
    return h(
      "tr",
      { "data-ledger": a.symbol },
      h("th", {}, a.symbol),
      h("td.num", { "data-spendable": a.symbol, "data-units": b?.spendable ?? "0" }, prices.balance(b?.spendable ?? "0", a.symbol, { symbol: false })),
      h("td.num", {}, prices.balance(b?.held ?? "0", a.symbol, { symbol: false })),
      h("td.num", { "data-cap": a.symbol }, balance(BigInt(b?.cap_remaining ?? "0"), a.symbol, { symbol: false, unlimited: MAX_CAP_TOTAL / 2n })),
    );
  });
  // An open debt: a debit the balance could not cover (e.g. a reorg removed a deposit already
  // spent). The gateway serves nothing in that asset until a deposit repays it: say so.
  const debts = (view.debts ?? []).map((d) => {
    const owed = prices.money(d.outstanding, d.asset, { rounding: "up" });
    return h("p.notice.error", { "data-debt": String(d.id) }, `You owe ${owed} (debt ${d.id}: ${d.reason}). Requests paid in ${d.asset} are refused until a deposit repays it; deposits repay it first.`);
  });
  clear(
    box,
    h("h2", {}, `Account ${view.account}`),
    ...debts,
    h("p.muted", {}, "What the gateway may spend: your vault deposits as the indexer has seen them, within the spend cap you signed.", view.wallets.length ? ` Wallet: ${view.wallets.join(", ")}` : ""),
    h("table#ledger", {}, h("thead", {}, h("tr", {}, h("th", {}, "Asset"), h("th", {}, "Spendable"), h("th", {}, "Held"), h("th", {}, "Spend cap left"))), h("tbody", {}, ...rows)),
  );
  return view;
}

async function drawPlayground(box: HTMLElement, app: App, accountBox: HTMLElement): Promise<void> {
  const { ctx, wallet } = app;
  let list: ModelInfo[];
  try {
    list = await models();
  } catch (err) {
    return notice(box, "error", `Cannot list models: ${(err as Error).message}`);
  }
  box.className = "card";
  const modelSel = h("select#model", {}, ...list.map((m) => h("option", { value: m.id }, `${m.id} (${m.owned_by})`)));
  const assetSel = h("select#pay-with");
  const maxTokens = h("input#max-tokens", { value: "256", size: 6, inputmode: "numeric" });
  const prompt = h("textarea#prompt", { rows: 4, cols: 70, placeholder: "Ask anything…" });
  prompt.value = "Summarise why idle API credits should be tradable.";
  const estimate = h("div#estimate.quote");
  const output = h("pre#output.output");
  const result = h("div#result.notice", { role: "status" });
  const capStatus = h("div#cap-status.notice", { role: "status" });
  const capTotal = h("input#cap-total", { value: "50", size: 8, inputmode: "decimal" });
  const sendBtn = h("button#send-prompt", {}, "Send");
  const sessionUsd = h("input#session-usd", { value: (SESSION_DEFAULT_USD_MICRO / 1_000_000n).toString(), size: 5, inputmode: "decimal" });
  const sessionHours = h("input#session-hours", { value: "24", size: 3, inputmode: "numeric" });
  const sessionStatus = h("div#session-status.notice", { role: "status" });
  let holdBound = 0n; // the estimate's upper bound on this request's cost: a voucher's hold
  let maxRateBps: number | null = null; // the most a lot may charge it (the hold is priced at it)

  const model = () => list.find((m) => m.id === modelSel.value)!;
  function fillAssets(): void {
    const keep = assetSel.value;
    clear(assetSel, ...Object.keys(model().pricing).map((s) => h("option", { value: s, selected: s === keep }, s)));
    if (!assetSel.value && assetSel.options.length) assetSel.selectedIndex = 0;
  }

  function drawEstimate(): void {
    const m = model();
    const symbol = assetSel.value;
    const rates = m.pricing[symbol];
    const asset = ctx.assets.find((a) => a.symbol === symbol);
    if (!rates || !asset) return notice(estimate, "error", `No capacity sells ${m.id} for ${symbol || "any asset"} right now.`);
    const bytes = new TextEncoder().encode(prompt.value).length;
    const out = Math.max(1, Number(maxTokens.value) || 0);
    const price = playgroundPrice(m, symbol, asset.decimals, bytes, out);
    holdBound = price.most;
    maxRateBps = price.maxRate;
    const lots = price.maxRate === null || price.maxRate === rates.rate_bps
      ? ""
      : ` at the cheapest lot (${rates.rate_bps! / 100} % of list price); lots up to ${price.maxRate / 100} % may serve it`;
    notice(
      estimate,
      "info",
      h("div", {}, "Estimated cost: about ", h("strong#estimate-cost", {}, money(price.typical, symbol)), ` (≈${price.typicalInputs} input + up to ${out} output tokens)`),
      h("div.muted", {}, `At most ${money(price.most, symbol, { rounding: "up" })} is held while it runs; you pay only what is metered. Rates: ${rates.input_per_million} in / ${rates.output_per_million} out per million tokens${lots}.`),
    );
  }

  async function allowSpending(): Promise<void> {
    const account = wallet.account;
    const client = wallet.client;
    if (!account || !client) return notice(capStatus, "error", "Connect your wallet first: the cap is signed by it.");
    const asset = ctx.asset(assetSel.value);
    let total: bigint;
    try {
      total = parseAmount(capTotal.value, asset.decimals, asset.symbol);
    } catch (err) {
      return notice(capStatus, "error", (err as Error).message);
    }
    const block = await ctx.client.getBlock({ blockTag: "latest" });
    const expiry = block.timestamp + 30n * 86_400n;
    const ok = await send(ctx, client, account, capStatus, `Allow the vault to charge up to ${money(total, asset.symbol)}`, {
      address: ctx.config.contracts.CreditsVault,
      abi: vaultAbi,
      functionName: "set_spend_cap",
      args: [asset.address, maxUint256, total, expiry],
    });
    if (ok) {
      notice(capStatus, "pending", "Cap set on chain; waiting for the indexer to record it…");
      for (let i = 0; i < 60; i++) {
        const view = await api.account().catch(() => null);
        if (view && BigInt(view.balances[asset.symbol]?.cap_remaining ?? "0") > 0n) {
          notice(capStatus, "ok", `Spend cap recorded: up to ${money(total, asset.symbol)}.`);
          void drawAccount(accountBox, app);
          return;
        }
        await new Promise((r) => setTimeout(r, 500));
      }
      notice(capStatus, "error", "The indexer has not recorded the cap yet; reload in a moment.");
    }
  }

  /** Signed mode: the wallet authorizes a session key made in this tab, bounded by a maximum
   *  (default $5) and an expiry (at most 24 h), both shown in the wallet's prompt; the
   *  coordinator registers it on chain. From then on this tab signs each request's voucher. */
  async function startSession(): Promise<void> {
    const account = wallet.account;
    const client = wallet.client;
    if (!account || !client) return notice(sessionStatus, "error", "Connect your wallet first: it signs the session key.");
    const asset = ctx.asset(assetSel.value);
    const vault = ctx.config.contracts.CreditsVault;
    let nonce: bigint;
    try {
      nonce = await ctx.client.readContract({ address: vault, abi: vaultAbi, functionName: "session_nonce", args: [account, asset.address] });
    } catch {
      return notice(sessionStatus, "error", "This chain's CreditsVault has no session keys (signed mode's vault is not deployed here). Requests use your spend cap. Nothing was signed.");
    }
    let usd: bigint;
    const hours = Number(sessionHours.value);
    try {
      usd = parseAmount(sessionUsd.value, 6, "USD");
      if (!(Number.isInteger(hours) && hours >= 1 && hours <= 24)) throw new Error("A playground session lasts 1 to 24 hours.");
    } catch (err) {
      return notice(sessionStatus, "error", (err as Error).message);
    }
    const prices = await loadPrices(ctx);
    const maximum = sessionMaximum(asset.symbol, usd, prices.twap(asset.symbol));
    if (maximum === null || maximum === 0n) return notice(sessionStatus, "error", `${asset.symbol} has no TWAP yet: its session maximum cannot be set in dollars. Nothing was signed.`);
    const now = (await ctx.client.getBlock({ blockTag: "latest" })).timestamp;
    const expiry = sessionExpiry(now, hours);
    const privateKey = generatePrivateKey();
    const key = sessionAccount(privateKey);
    const terms = { account, asset: asset.address, key: key.address, lanes: 1n, maximum, expiry, nonce };
    const bound = `${prices.money(maximum, asset.symbol)} in all, until ${new Date(Number(expiry) * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
    try {
      notice(sessionStatus, "pending", `Sign in your wallet: a session key of this tab may spend at most ${bound} (no transaction, no gas).`);
      const signature = await client.signTypedData({ account, ...sessionKeyTypedData(ctx.chain.id, vault, terms) });
      await api.sessionKey({ account, asset: asset.symbol, key: key.address, lanes: 1, maximum: maximum.toString(), expiry: expiry.toString(), nonce: nonce.toString(), signature });
      keepTabSession({ chainId: ctx.chain.id, vault, account, asset: asset.address, symbol: asset.symbol, privateKey, key: key.address, session: nonce.toString(), lanes: 1, maximum: maximum.toString(), expiry: expiry.toString() });
      notice(sessionStatus, "ok", `Session ${nonce} requested: at most ${bound}. The coordinator registers it on chain; once registered, this tab signs each ${asset.symbol} request's voucher (the Usage page shows it).`);
    } catch (err) {
      notice(sessionStatus, "error", explain(err).replace("The transaction would fail: ", "Could not start a session: "));
    }
  }

  /** Ends the wallet's session for the selected asset (a transaction: `revoke_session_key`):
   *  the vault settles its vouchers no later than the end of the next window, and a
   *  SessionKey signed but not yet registered is void. This tab forgets its key. */
  async function revokeSession(): Promise<void> {
    const account = wallet.account;
    const client = wallet.client;
    if (!account || !client) return notice(sessionStatus, "error", "Connect your wallet first: it sends the revocation.");
    const asset = ctx.asset(assetSel.value);
    const tab = tabSession(account, asset.symbol);
    const which = tab ? `session ${tab.session}` : "the session";
    const hash = await send(ctx, client, account, sessionStatus, `Revoke ${which} in ${asset.symbol}`, {
      address: ctx.config.contracts.CreditsVault,
      abi: vaultAbi,
      functionName: "revoke_session_key",
      args: [asset.address],
    });
    if (hash) {
      forgetTabSession(account, asset.symbol);
      notice(sessionStatus, "ok", `Revoked ${which} in ${asset.symbol}: its vouchers settle no later than the end of the next settlement window, and this tab signs no more. Requests use your spend cap again.`);
    }
  }

  /** The voucher for this request if this tab holds a registered session in `symbol`. */
  async function voucherHeaders(symbol: string): Promise<Record<string, string>> {
    const account = wallet.account;
    const tab = account ? tabSession(account, symbol) : null;
    if (!tab) return {};
    if (BigInt(tab.expiry) * 1000n < BigInt(Date.now())) {
      forgetTabSession(tab.account, symbol);
      return {};
    }
    const response = await fetch(`/v1/promptex/lanes?asset=${symbol}`, { headers: { authorization: `Bearer ${apiKey()}` } });
    if (!response.ok) return {};
    const header = await voucherFor(tab, (await response.json()) as LanesReport, holdBound);
    return header ? { [VOUCHER_HEADER]: header } : {};
  }

  async function run(): Promise<void> {
    const symbol = assetSel.value;
    output.textContent = "";
    notice(result, "pending", "Sending…");
    sendBtn.disabled = true;
    try {
      const voucher = await voucherHeaders(symbol);
      // The hold is priced at this rate: a pricier lot must not serve it (it would fit fewer
      // output tokens to the hold, or refuse it); without a voucher it bounds the charge too.
      const most: Record<string, string> = maxRateBps === null ? {} : { [MAX_RATE_HEADER]: String(maxRateBps) };
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey()}`, "content-type": "application/json", "x-promptex-asset": symbol, ...most, ...voucher },
        body: JSON.stringify({
          model: modelSel.value,
          messages: [{ role: "user", content: prompt.value }],
          max_tokens: Math.max(1, Number(maxTokens.value) || 1),
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      const requestId = response.headers.get("x-request-id") ?? "";
      // Signed mode: the lane it was charged on (a stream's lane total comes in its last event).
      const lane = response.headers.get("x-promptex-lane");
      let laneCharged = response.headers.get("x-promptex-lane-charged-units");
      if (!response.ok || !response.body) {
        const body = await response.json().catch(() => ({}));
        return notice(result, "error", `The gateway refused: ${body?.error?.message ?? response.statusText}. Nothing was charged.`);
      }
      notice(result, "pending", "Streaming…");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let usage: { prompt_tokens: number; completion_tokens: number } | null = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut: number;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            const delta = chunk.choices?.[0]?.delta?.content;
            if (delta) output.textContent += delta;
            if (chunk.usage) usage = chunk.usage;
            if (chunk.promptex?.lane_charged_units) laneCharged = String(chunk.promptex.lane_charged_units);
          }
        }
      }
      const signedNote =
        lane === null
          ? null
          : `Signed by this tab's session key on lane ${lane}` + (laneCharged === null ? "." : `; charged on it so far: ${money(BigInt(laneCharged), symbol)}.`);
      notice(result, "pending", "Metering…");
      let record = null;
      for (let i = 0; i < 40 && !record; i++) {
        record = await api.usageRecord(requestId).catch(() => null);
        if (!record) await new Promise((r) => setTimeout(r, 250));
      }
      const view = await drawAccount(accountBox, app);
      const after = view ? BigInt(view.balances[symbol]?.spendable ?? "0") : null;
      notice(
        result,
        "ok",
        h("div", {}, "Metered cost: ", h("strong#metered-cost", { "data-units": record?.cost ?? "" }, record ? money(BigInt(record.cost), symbol) : "not recorded yet")),
        h("div", {}, usage ? `${usage.prompt_tokens} input + ${usage.completion_tokens} output tokens · ` : "", "request ", h("code#request-id", {}, requestId)),
        signedNote ? h("div#signed-note", {}, signedNote) : null,
        h("div", {}, "Balance after: ", h("strong#balance-after", { "data-units": after?.toString() ?? "" }, after === null ? "—" : `${balance(after, symbol)} spendable`)),
      );
    } catch (err) {
      notice(result, "error", `The request failed: ${(err as Error).message}`);
    } finally {
      sendBtn.disabled = false;
    }
  }

  modelSel.addEventListener("change", () => { fillAssets(); drawEstimate(); });
  for (const el of [assetSel, maxTokens, prompt]) el.addEventListener("input", drawEstimate);
  assetSel.addEventListener("change", drawEstimate);
  sendBtn.addEventListener("click", () => void run());
  fillAssets();
  if ([...assetSel.options].some((o) => o.value === "USDC")) assetSel.value = "USDC";
  drawEstimate();
  box.replaceChildren(
    h("h2", {}, "Playground"),
    h("div.row", {}, h("label", {}, "Model ", modelSel), h("label", {}, "Pay with ", assetSel), h("label", {}, "Max output tokens ", maxTokens)),
    prompt,
    estimate,
    h("div.row", {}, sendBtn, h("span.muted", {}, "Needs a deposit in the vault and a spend cap for the paying asset:"), h("label", {}, "cap ", capTotal), h("button.secondary#allow-spending", { onclick: () => void allowSpending() }, "Allow spending")),
    capStatus,
    h("div.row", {}, h("span.muted", {}, "Or signed mode: a session key in this tab signs each request, bounded by"), h("label", {}, "$ ", sessionUsd), h("label", {}, "for hours ", sessionHours), h("button.secondary#start-session", { onclick: () => void startSession() }, "Start a session"), h("button.secondary#revoke-session", { onclick: () => void revokeSession() }, "Revoke")),
    sessionStatus,
    output,
    result,
  );
}
