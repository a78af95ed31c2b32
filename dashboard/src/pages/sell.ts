// Sell capacity: onboarding (the server checks the key with one minimal call, seals it,
// and its attestor opens the lot on chain; the key is never shown again), the connected
// seller's lots in the CreditEscrow, and USDC earnings to claim from the vault.
import { erc20Abi, escrowAbi, vaultAbi } from "../abi";
import { api, apiKey, type LotHealth } from "../api";
import { readable, send, type Ctx } from "../chain";
import { parseAmount, short } from "../format";
import { balance, money, usdText } from "../money";
import type { App, Page } from "../main";
import { field, h, notice } from "../ui";
import { walletGate } from "../wallet";
import { drawKey } from "./utilize";

const STATUS = ["—", "open", "closed", "expired", "slashed"];
const MAX_LOTS = 200n;
const DAY = 86_400n;
// Where each provider's OpenAI- or Anthropic-compatible API lives; the seller can change it.
const BASE_URLS: Record<string, string> = {
  anthropic: "https://api.anthropic.com",
  openai: "https://api.openai.com/v1",
  google: "https://generativelanguage.googleapis.com/v1beta/openai",
  meta: "https://api.llama.com/compat/v1",
};

export const sellPage: Page = (root, app) => {
  const { ctx, wallet } = app;
  root.append(h("h1", {}, "Sell capacity"));
  const gate = walletGate(wallet, ctx);
  if (gate) return void root.append(gate);
  const onboard = h("div.card#onboard");
  const earnings = h("div.card#earnings", {}, "Loading…");
  const lots = h("div#lots", {}, "Loading lots…");
  root.append(onboard, earnings, h("h2", {}, "Your lots"), lots);
  const reloadLots = () => void drawLots(lots, app).catch((err) => notice(lots, "error", `Cannot read lots: ${err.message}`));
  drawOnboarding(onboard, app, reloadLots);
  void drawEarnings(earnings, app).catch((err) => notice(earnings, "error", err.message));
  reloadLots();
};

function drawOnboarding(box: HTMLElement, app: App, opened: () => void): void {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  box.append(h("h2", {}, "Add capacity"));
  if (!apiKey()) {
    const keyBox = h("div#key-box");
    box.append(h("p.notice.info", {}, "Onboarding is tied to your account: get an API key by signing with your wallet (no transaction)."), keyBox);
    drawKey(keyBox, app, () => app.refresh());
    return;
  }
  const escrow = ctx.config.contracts.CreditEscrow;
  const providers = ctx.assets.filter((a) => a.kind === "provider" && a.provider);
  const provider = h("select#seller-provider", {}, ...providers.map((a) => h("option", { value: a.provider!.toLowerCase() }, `${a.provider} (${a.symbol})`)));
  const baseUrl = h("input#seller-base-url", { size: 44 });
  const key = h("input#seller-api-key", { type: "password", placeholder: "sk-…", size: 44, autocomplete: "off" });
  const face = h("input#seller-face", { value: "250", size: 10, inputmode: "decimal" });
  const kind = h("select#seller-kind", {}, h("option", { value: "listed" }, "listed — buyers pay USDC at your rate"), h("option", { value: "tokenized" }, "tokenized — mint provider tokens"));
  const rate = h("input#seller-rate", { value: "60", size: 5, inputmode: "decimal" });
  const days = h("input#seller-days", { value: "30", size: 5, inputmode: "numeric" });
  const declare = h("input#seller-declare", { type: "checkbox" });
  const declaration = h("span#declaration-text");
  const bondLine = h("p#seller-bond.muted");
  const status = h("div.notice#onboard-status", { role: "status" });
  let bond: bigint | null = null;

  const setProvider = () => {
    baseUrl.value = BASE_URLS[provider.value] ?? "";
    const name = provider.selectedOptions[0]?.textContent?.replace(/ \(.*\)$/, "") ?? provider.value;
    declaration.textContent = `I declare that my agreement with ${name} permits the resale of this API capacity.`;
  };
  const faceMicro = (): bigint => parseAmount(face.value, 6, "USD");
  const refreshBond = async (): Promise<void> => {
    bond = null;
    try {
      const value = faceMicro();
      // A tokenized lot's only bond is its token's share (every token of a provider carries the
      // same share, so their failures pool fairly); a listed lot's is at least the minimum.
      const token = providers.find((a) => a.provider!.toLowerCase() === provider.value)?.address;
      const tokenized = kind.value === "tokenized";
      if (tokenized && !token) throw new Error("Choose a provider first.");
      const bondRead = tokenized
        ? ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "tokenized_bond", args: [token!, value] })
        : ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "min_bond", args: [value] });
      const [minimum, allowance, held] = await Promise.all([
        bondRead,
        ctx.client.readContract({ address: ctx.usdc.address, abi: erc20Abi, functionName: "allowance", args: [account, escrow] }),
        ctx.client.readContract({ address: ctx.usdc.address, abi: erc20Abi, functionName: "balanceOf", args: [account] }),
      ]);
      bond = minimum;
      bondLine.dataset.bond = String(minimum);
      // The escrow opens a lot only against an allowance of exactly its bond.
      bondLine.dataset.approved = String(allowance === minimum);
      bondLine.replaceChildren(
        "Bond: ", h("strong", {}, money(minimum, "USDC")),
        tokenized
          ? " — the token's bond share of this face value (a tokenized lot takes exactly this), taken from your wallet when the lot opens and released as it is consumed or closes. "
          : " — the escrow's minimum for this face value, taken from your wallet when the lot opens and released as it is consumed or closes. ",
        allowance >= minimum ? "Approved." : `Approve it first (approved now: ${money(allowance, "USDC", { rounding: "down" })}).`,
        held < minimum ? ` Your wallet holds only ${money(held, "USDC", { rounding: "down" })}.` : "",
      );
    } catch (err) {
      bondLine.dataset.approved = "false";
      bondLine.textContent = (err as Error).message;
    }
  };
  provider.addEventListener("change", () => { setProvider(); void refreshBond(); });
  face.addEventListener("input", () => void refreshBond());
  kind.addEventListener("change", () => { rate.disabled = kind.value === "tokenized"; void refreshBond(); });
  setProvider();
  void refreshBond();

  const approve = h("button#approve-bond", { onclick: async () => {
    await refreshBond();
    if (bond === null) return notice(status, "error", "Enter the face value first.");
    if (await send(ctx, wallet.client!, account, status, "Approve the bond", { address: ctx.usdc.address, abi: erc20Abi, functionName: "approve", args: [escrow, bond] })) await refreshBond();
  } }, "Approve bond");

  const open = h("button#open-lot", { onclick: async () => {
    let request;
    try {
      // The rate in percent with at most two decimals is exactly basis points (no float).
      const rateBps = kind.value === "listed" ? Number(parseAmount(rate.value, 2, "The rate (%)", true)) : 0;
      if (kind.value === "listed" && !(rateBps > 0 && rateBps <= 10_000)) throw new Error("The rate is a share of list price: more than 0 and at most 100 %.");
      const lifetime = BigInt(days.value.trim() || "0");
      if (lifetime <= 0n) throw new Error("Enter how many days the capacity stays valid.");
      if (!key.value.trim()) throw new Error("Paste the API key the capacity is sold from.");
      await refreshBond();
      if (bond === null) throw new Error("Enter the face value first.");
      const now = (await ctx.client.getBlock()).timestamp;
      request = {
        provider: provider.value,
        base_url: baseUrl.value.trim(),
        api_key: key.value.trim(),
        face_value_usd_micro: String(faceMicro()),
        kind: kind.value as "listed" | "tokenized",
        rate_bps: rateBps,
        expires_at: Number(now + lifetime * DAY),
        bond: String(bond),
        declare_resale_permitted: declare.checked,
      };
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    notice(status, "pending", "Checking the key with the provider and opening the lot on chain…");
    try {
      const lot = await api.addCapacity(request);
      key.value = ""; // sealed on the server now; the page keeps no copy
      notice(status, "ok", `Lot ${lot.chain_lot_id} opened on chain in `, h("code", { title: lot.tx }, short(lot.tx, 10, 8)), ". Your key is sealed on the server; buyers are routed through it from now on.");
      box.dataset.openedLot = String(lot.chain_lot_id);
      opened();
      await refreshBond();
    } catch (err) {
      const message = (err as Error).message;
      notice(status, "error", readable(message) ?? `${message.charAt(0).toUpperCase()}${message.slice(1)}.`);
    }
  } }, "Open lot");

  box.append(
    h("p.muted", {}, "Your API key is checked with one minimal call, stored sealed (AES-256-GCM) on this server and never shown again — not to buyers, not to this page."),
    h(
      "div.row",
      {},
      field("Provider", provider),
      field("Base URL", baseUrl, "OpenAI- or Anthropic-compatible"),
      field("API key", key),
      field("Face value (USD)", face),
      field("Kind", kind),
      field("Rate (% of list)", rate, "listed lots: what buyers pay and you earn"),
      field("Valid for (days)", days),
    ),
    h("label.field#declare-field", {}, declare, declaration),
    bondLine,
    h("div.row", {}, approve, open),
    status,
  );
}

async function drawEarnings(box: HTMLElement, app: App): Promise<void> {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  const claimable = await ctx.client.readContract({ address: ctx.config.contracts.CreditsVault, abi: vaultAbi, functionName: "claimable", args: [account, ctx.usdc.address] });
  const status = h("div.notice#claim-status");
  box.replaceChildren(
    h("h2", {}, "Earnings"),
    h("p", {}, "USDC earned from listed lots, claimable from the vault: ", h("strong#claimable", { "data-units": claimable.toString() }, balance(claimable, "USDC")), " "),
    h("button#claim", { disabled: claimable === 0n, onclick: async () => {
      if (await send(ctx, wallet.client!, account, status, "Claim USDC", { address: ctx.config.contracts.CreditsVault, abi: vaultAbi, functionName: "claim", args: [ctx.usdc.address] })) void drawEarnings(box, app);
    } }, "Claim"),
    status,
  );
}

async function drawLots(box: HTMLElement, app: App): Promise<void> {
  const ctx: Ctx = app.ctx;
  const account = app.wallet.account!;
  const symbolOf = new Map(ctx.assets.map((a) => [a.address.toLowerCase(), a]));
  const escrow = ctx.config.contracts.CreditEscrow;
  const count = await ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "lot_count" });
  const first = count > MAX_LOTS ? count - MAX_LOTS + 1n : 1n;
  const ids = Array.from({ length: Number(count - first + 1n) }, (_, i) => first + BigInt(i));
  const all = await Promise.all(ids.map((id) => ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "lots", args: [id] }).then((lot) => ({ id, lot }))));
  const mine = all.filter(({ lot }) => lot.seller.toLowerCase() === account.toLowerCase());
  if (!mine.length) return notice(box, "info", "This wallet has no lots.");
  // The gateways' view of each lot's upstream (needs the account's API key; never moves money).
  const health = new Map<string, LotHealth>();
  if (apiKey()) {
    for (const seen of await api.sellerHealth().catch(() => [] as LotHealth[])) {
      if (seen.chain_lot_id !== null) health.set(String(seen.chain_lot_id), seen);
    }
  }
  box.className = "";
  box.replaceChildren(
    h(
      "table#lot-table",
      {},
      h("thead", {}, h("tr", {}, ...["Lot", "Token", "Kind", "Status", "Face value", "Remaining", "Bond (released)", "Expiry", "Upstream health"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...mine.map(({ id, lot }) => {
          const token = symbolOf.get(lot.token.toLowerCase());
          const tokenized = lot.kind === 1; // KIND_TOKENIZED (2: listed)
          const remaining = lot.capacity - lot.consumed;
          // Open on chain with a close requested: routed no more, finalize_close from close_at.
          const status = lot.status === 1 && lot.close_at !== 0n ? "closing" : STATUS[lot.status] ?? String(lot.status);
          return h(
            "tr",
            { "data-lot": String(id) },
            h("td", {}, String(id)),
            h("td", {}, token?.symbol ?? lot.token),
            h("td", {}, tokenized ? "tokenized" : `listed at ${lot.rate_bps / 100} % of list`),
            h("td", { "data-lot-status": status }, status),
            h("td.num", {}, usdText(lot.face_value)),
            h("td.num", {}, tokenized ? balance(remaining, token?.symbol ?? "tokens") : usdText(remaining, "down")),
            h("td.num", {}, `${money(lot.bond, "USDC")} (${money(lot.bond_released, "USDC", { symbol: false })})`),
            h("td", {}, new Date(Number(lot.expiry) * 1000).toISOString().slice(0, 10)),
            h("td", { "data-lot-health": String(id) }, healthText(health.get(String(id)))),
          );
        }),
      ),
    ),
  );
}

function healthText(seen: LotHealth | undefined): string {
  if (!seen) return apiKey() ? "no calls yet" : "—";
  const parts = [`${seen.requests} calls, ${(seen.error_rate * 100).toFixed(1)} % errors`];
  if (seen.mean_latency_ms !== null) parts.push(`${seen.mean_latency_ms} ms mean`);
  if (seen.last_error && seen.last_error_at) parts.push(`last error ${seen.last_error} at ${new Date(seen.last_error_at * 1000).toISOString().slice(0, 16).replace("T", " ")}`);
  if (seen.circuit_open) parts.push("skipped for now (circuit open)");
  if (seen.key_refused_at) parts.push("the provider refused this lot's API key: revoked?");
  return parts.join("; ");
}
