// Hedge: the perpetual (markets, open a long or short, your positions with P&L now from
// `preview_close`, close, add margin; LPs provide and withdraw) and the options market
// (offers, buy; your holdings valued at the TWAP or their settled payout; settle, claim;
// writers write and offer, reclaim). Everything is read from the chain through /rpc and
// signed by the wallet; the figures are the contracts' own.
import { formatUnits, type Address } from "viem";
import { erc20Abi, optionsAbi, oracleAbi, perpAbi } from "../abi";
import type { AssetInfo } from "../api";
import { explain, send, type Ctx } from "../chain";
import { parseAmount } from "../format";
import { amountText, money, usdText, USDC_DECIMALS } from "../money";
import type { App, Page } from "../main";
import { h, notice } from "../ui";
import { walletGate } from "../wallet";

const BPS = 10_000n;
const PRICE_DECIMALS = 24; // Oracle price units per dollar per whole token (USDC units per 10**18 token units × 10**18)
const PRICE_SCALE = 10n ** 36n;
const CALL = 1;
const PUT = 2;
const MAX_ROWS = 200n;
const SHARE_DECIMALS = 18; // Perp mints 10**12 shares per USDC unit: one share per dollar at the start

/** A dollar price per whole token from Oracle units (to the micro-dollar, rounded down). */
const dollars = (price: bigint) => usdText(price / 10n ** BigInt(PRICE_DECIMALS - USDC_DECIMALS), "down");
const usd = (amount: bigint) => amountText(amount, USDC_DECIMALS, 2);
const signedUsd = (amount: bigint) => (amount < 0n ? `−${usd(-amount)}` : `+${usd(amount)}`);

/** Whole USDC typed by the user → USDC units (an Error with a readable message otherwise). */
const usdcOf = (ctx: Ctx, text: string) => parseAmount(text, ctx.usdc.decimals, "USDC");

/** A dollar price per whole token → Oracle units; `allowZero` for a put without a floor. */
function priceOf(text: string, what: string, allowZero = false): bigint {
  if (allowZero && /^\s*0*(\.0*)?\s*$/.test(text)) return 0n;
  try {
    return parseAmount(text.replace(/^\s*\$/, ""), PRICE_DECIMALS, "USD");
  } catch {
    throw new Error(`Enter the ${what} in dollars per token, e.g. 3.70`);
  }
}

function ids(count: bigint): bigint[] {
  const first = count > MAX_ROWS ? count - MAX_ROWS + 1n : 1n;
  return Array.from({ length: Number(count - first + 1n) }, (_, i) => first + BigInt(i));
}

/** Approve `spender` for `amount` of `asset` if the allowance is short; false if that was refused. */
async function ensureAllowance(app: App, status: HTMLElement, asset: AssetInfo, spender: Address, amount: bigint): Promise<boolean> {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  const allowance = await ctx.client.readContract({ address: asset.address, abi: erc20Abi, functionName: "allowance", args: [account, spender] });
  if (allowance >= amount) return true;
  return Boolean(await send(ctx, wallet.client!, account, status, `Approve ${money(amount, asset.symbol)}`, { address: asset.address, abi: erc20Abi, functionName: "approve", args: [spender, amount] }));
}

/** Checks the wallet holds `amount` USDC; shows why not (and returns false) otherwise. */
async function holds(app: App, status: HTMLElement, amount: bigint, what: string): Promise<boolean> {
  const { ctx, wallet } = app;
  const have = await ctx.client.readContract({ address: ctx.usdc.address, abi: erc20Abi, functionName: "balanceOf", args: [wallet.account!] });
  if (have >= amount) return true;
  notice(status, "error", `Insufficient balance: ${what} needs ${usd(amount)} USDC; your wallet holds ${usd(have)}. Nothing was sent.`);
  return false;
}

export const hedgePage: Page = (root, app) => {
  const { ctx, wallet } = app;
  const perpAddress = ctx.config.contracts.Perp;
  const optionsAddress = ctx.config.contracts.Options;
  root.append(h("h1", {}, "Hedge"));
  if (!perpAddress || !optionsAddress) {
    return void root.append(h("p.notice.error", {}, "This deployment has no Options or Perp contract: redeploy (ape run deploy --force)."));
  }
  root.append(
    h(
      "p.muted",
      {},
      "Exposed to rising compute prices? A capped call or a long offsets them; a seller of capacity hedges falling prices with a put or a short. Positions and options trade and settle at the Oracle's TWAP, never at a spot price.",
    ),
  );
  const gate = walletGate(wallet, ctx);
  const markets = h("div#perp-markets", {}, "Loading markets…");
  const openBox = h("div.card#perp-open-box");
  const positions = h("div#perp-positions", {}, "");
  const lpBox = h("div.card#perp-lp");
  const offers = h("div#option-offers", {}, "Loading offers…");
  const holdings = h("div#option-holdings", {}, "");
  const writeBox = h("div.card#option-write");
  const perpStatus = h("div#perp-status.notice", { role: "status" });
  const optionStatus = h("div#option-status.notice", { role: "status" });
  root.append(
    ...(gate ? [gate] : []),
    h("h2", {}, "Perpetual markets"),
    markets,
    h("h2", {}, "Open a position"),
    openBox,
    perpStatus,
    h("h2", {}, "Your positions"),
    positions,
    h("h2", {}, "Liquidity (LPs take the other side of traders' net open interest)"),
    lpBox,
    h("h2", {}, "Options on offer"),
    offers,
    optionStatus,
    h("h2", {}, "Your options"),
    holdings,
    h("h2", {}, "Write options"),
    writeBox,
  );
  const tokens = ctx.assets.filter((a) => a.kind === "provider");
  const symbolOf = new Map(ctx.assets.map((a) => [a.address.toLowerCase(), a.symbol]));
  const sym = (address: Address) => symbolOf.get(address.toLowerCase()) ?? address;
  const perp = { address: perpAddress, abi: perpAbi } as const;
  const options = { address: optionsAddress, abi: optionsAbi } as const;

  // ─── Perpetual ─────────────────────────────────────────────────────────────

  type MarketRow = { token: AssetInfo; market: Awaited<ReturnType<typeof readMarket>>; price: bigint | null; rate: bigint };
  async function readMarket(token: AssetInfo) {
    return ctx.client.readContract({ ...perp, functionName: "markets", args: [token.address] });
  }
  let rows: MarketRow[] = [];

  async function drawMarkets(): Promise<void> {
    const [poolAmount, reserved] = await Promise.all([
      ctx.client.readContract({ ...perp, functionName: "pool_amount" }),
      ctx.client.readContract({ ...perp, functionName: "total_reserved" }),
    ]);
    rows = await Promise.all(
      tokens.map(async (token) => {
        const [market, price, rate] = await Promise.all([
          readMarket(token),
          ctx.client.readContract({ ...perp, functionName: "price", args: [token.address] }).catch(() => null),
          ctx.client.readContract({ ...perp, functionName: "funding_rate", args: [token.address] }).catch(() => 0n),
        ]);
        return { token, market, price, rate };
      }),
    );
    rows = rows.filter((r) => r.market.max_leverage > 0n);
    markets.className = "";
    markets.replaceChildren(
      h(
        "table#perp-market-table",
        {},
        h("thead", {}, h("tr", {}, ...["Market", "TWAP price", "Funding / hour", "Long OI", "Short OI", "Max leverage", "Open fee"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          ...rows.map(({ token, market, price, rate }) =>
            h(
              "tr",
              { "data-market": token.symbol },
              h("th", {}, `${token.symbol}-PERP`, market.active ? "" : h("small", {}, " (closed)")),
              h("td.num", { "data-twap": token.symbol }, price === null ? "no TWAP yet" : dollars(price)),
              h("td.num", {}, `${rate > 0n ? "longs pay " : rate < 0n ? "shorts pay " : ""}${(Math.abs(Number(rate)) / 1e16).toFixed(4)} %`),
              h("td.num", { "data-long-oi": token.symbol }, `$${usd(market.long_notional)}`),
              h("td.num", {}, `$${usd(market.short_notional)}`),
              h("td.num", {}, `${market.max_leverage}×`),
              h("td.num", {}, `${(Number(market.open_fee_bps) / 100).toFixed(2)} %`),
            ),
          ),
        ),
      ),
      h("p", {}, "Pool liquidity: ", h("strong#perp-pool", {}, `$${usd(poolAmount)}`), `, of which $${usd(reserved)} reserved for open positions' maximum gains.`),
    );
  }

  function drawOpen(): void {
    if (gate) return void openBox.replaceChildren("Connect a wallet to trade.");
    const tokenSel = h("select#perp-token", {}, ...rows.map((r) => h("option", { value: r.token.symbol, selected: r.token.symbol === "GPT" }, r.token.symbol)));
    const side = h("select#perp-side", {}, h("option", { value: "long" }, "long (gains when the price rises)"), h("option", { value: "short" }, "short (gains when it falls)"));
    const margin = h("input#perp-margin", { inputmode: "decimal", placeholder: "USDC", size: 10 });
    const notional = h("input#perp-notional", { inputmode: "decimal", placeholder: "USDC", size: 10 });
    const summary = h("div#perp-open-summary.quote", {}, "Enter a margin and a notional.");
    const row = () => rows.find((r) => r.token.symbol === tokenSel.value)!;
    const terms = () => {
      const m = usdcOf(ctx, margin.value);
      const n = usdcOf(ctx, notional.value);
      const market = row().market;
      const fee = (n * market.open_fee_bps + BPS - 1n) / BPS;
      return { m, n, fee, market };
    };
    const describe = () => {
      try {
        const { m, n, fee, market } = terms();
        const kept = m - fee;
        const leverage = kept > 0n ? Number(n) / Number(kept) : Infinity;
        const tooHigh = kept <= 0n || kept * market.max_leverage < n;
        notice(
          summary,
          tooHigh ? "error" : "info",
          h("div", {}, "Leverage: ", h("strong#perp-leverage", {}, Number.isFinite(leverage) ? `${leverage.toFixed(2)}×` : "∞"), ` (at most ${market.max_leverage}×)`),
          h("div", {}, "Open fee: ", h("span#perp-open-fee", {}, `${usd(fee)} USDC`), ` (${(Number(market.open_fee_bps) / 100).toFixed(2)} % of the notional, taken from the margin)`),
          h("div", {}, `Entry at the ${row().token.symbol} TWAP: ${row().price === null ? "not available yet" : dollars(row().price!)}`),
        );
      } catch {
        notice(summary, "info", "Enter a margin and a notional.");
      }
    };
    for (const el of [margin, notional]) el.addEventListener("input", describe);
    for (const el of [tokenSel, side]) el.addEventListener("change", describe);

    async function open(): Promise<void> {
      let t: ReturnType<typeof terms>;
      try {
        t = terms();
      } catch (err) {
        return notice(perpStatus, "error", (err as Error).message);
      }
      const { token } = row();
      // The contract's own check, before anything is signed (approving first would change the chain).
      if (t.m <= t.fee || (t.m - t.fee) * t.market.max_leverage < t.n) {
        return notice(perpStatus, "error", explain(new Error("perp: leverage too high")));
      }
      if (!(await holds(app, perpStatus, t.m, "this margin"))) return;
      if (!(await ensureAllowance(app, perpStatus, ctx.usdc, perpAddress, t.m))) return;
      const ok = await send(ctx, wallet.client!, wallet.account!, perpStatus, `Open a ${side.value} of ${usd(t.n)} USDC on ${token.symbol}`, {
        ...perp,
        functionName: "open_position",
        args: [token.address, side.value === "long", t.m, t.n],
      });
      if (ok) void reloadPerp();
    }
    openBox.replaceChildren(
      h("div.row", {}, h("label", {}, "Market ", tokenSel), h("label", {}, "Side ", side), h("label", {}, "Margin ", margin), h("label", {}, "Notional ", notional), h("button#perp-open", { onclick: () => void open() }, "Open position")),
      summary,
    );
  }

  async function drawPositions(): Promise<void> {
    const account = wallet.account;
    if (!account) return void positions.replaceChildren("");
    const count = await ctx.client.readContract({ ...perp, functionName: "position_count" });
    const all = await Promise.all(ids(count).map(async (id) => ({ id, p: await ctx.client.readContract({ ...perp, functionName: "positions", args: [id] }) })));
    const mine = all.filter(({ p }) => p.owner.toLowerCase() === account.toLowerCase());
    if (!mine.length) return notice(positions, "info", "No open positions.");
    const previews = await Promise.all(mine.map(({ id }) => ctx.client.readContract({ ...perp, functionName: "preview_close", args: [id, false] }).catch(() => null)));
    positions.className = "";
    positions.replaceChildren(
      h(
        "table#perp-position-table",
        {},
        h("thead", {}, h("tr", {}, ...["#", "Side", "Market", "Notional", "Margin", "Entry", "TWAP now", "Funding owed", "P&L now (after fee)", "Close (min payout)", "Add margin"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          ...mine.map(({ id, p }, i) => {
            const s = previews[i];
            const minPayout = h("input", { "data-min-payout": String(id), size: 8, value: s ? formatUnits((s.payout * 99n) / 100n, 6) : "0" });
            const addAmount = h("input", { "data-add-margin": String(id), size: 6, placeholder: "USDC" });
            return h(
              "tr",
              { "data-position": String(id) },
              h("td", {}, String(id)),
              h("td", {}, p.is_long ? "long" : "short"),
              h("td", {}, sym(p.token)),
              h("td.num", {}, `$${usd(p.notional)}`),
              h("td.num", {}, `$${usd(p.margin)}`),
              h("td.num", {}, dollars((p.notional * PRICE_SCALE) / p.size)),
              h("td.num", {}, s ? dollars(s.price) : "—"),
              h("td.num", {}, s ? `${usd(s.funding < 0n ? -s.funding : s.funding)}${s.funding < 0n ? " received" : ""}` : "—"),
              h("td.num", { "data-pnl": String(id), class: s && s.payout < p.margin ? "num loss" : "num" }, s ? `${signedUsd(s.payout - p.margin)} USDC` : "no TWAP"),
              h("td", {}, minPayout, " ", h("button.secondary", { "data-action": "close", "data-position": String(id), onclick: () => void close(id, minPayout.value) }, "Close")),
              h("td", {}, addAmount, " ", h("button.secondary", { "data-action": "add-margin", "data-position": String(id), onclick: () => void addMargin(id, addAmount.value) }, "Add")),
            );
          }),
        ),
      ),
      h("p.muted", {}, "P&L now is what closing at this TWAP pays (price P&L, funding and the close fee, from the contract's preview_close) minus the margin."),
    );
  }

  async function close(id: bigint, minText: string): Promise<void> {
    let min: bigint;
    try {
      min = minText.trim() === "" || Number(minText) === 0 ? 0n : usdcOf(ctx, minText);
    } catch (err) {
      return notice(perpStatus, "error", (err as Error).message);
    }
    const ok = await send(ctx, wallet.client!, wallet.account!, perpStatus, `Close position ${id}`, { ...perp, functionName: "close_position", args: [id, min] });
    if (ok) void reloadPerp();
  }

  async function addMargin(id: bigint, text: string): Promise<void> {
    let amount: bigint;
    try {
      amount = usdcOf(ctx, text);
    } catch (err) {
      return notice(perpStatus, "error", (err as Error).message);
    }
    if (!(await holds(app, perpStatus, amount, "adding margin"))) return;
    if (!(await ensureAllowance(app, perpStatus, ctx.usdc, perpAddress, amount))) return;
    const ok = await send(ctx, wallet.client!, wallet.account!, perpStatus, `Add ${usd(amount)} USDC margin to position ${id}`, { ...perp, functionName: "add_margin", args: [id, amount] });
    if (ok) void reloadPerp();
  }

  async function drawLp(): Promise<void> {
    const account = wallet.account;
    if (!account) return void lpBox.replaceChildren("Connect a wallet to provide liquidity.");
    const [shares, total, value] = await Promise.all([
      ctx.client.readContract({ ...perp, functionName: "shares_of", args: [account] }),
      ctx.client.readContract({ ...perp, functionName: "total_shares" }),
      ctx.client.readContract({ ...perp, functionName: "pool_value", args: [false] }).catch(() => null),
    ]);
    const worth = total && value !== null ? (shares * value) / total : null;
    const amount = h("input#perp-provide-amount", { inputmode: "decimal", placeholder: "USDC", size: 10 });
    const burn = h("input#perp-withdraw-shares", { size: 14, value: formatUnits(shares, SHARE_DECIMALS) });
    lpBox.replaceChildren(
      h("p", {}, "Your pool shares: ", h("strong#perp-shares", { "data-shares": shares.toString() }, amountText(shares, SHARE_DECIMALS, 4)), worth === null ? "" : ` — worth about ${usd(worth)} USDC now`),
      h("div.row", {}, h("label", {}, "Provide ", amount, " USDC"), h("button#perp-provide", { onclick: () => void provide(amount.value) }, "Provide liquidity")),
      h("div.row", {}, h("label", {}, "Withdraw ", burn, " shares"), h("button.secondary#perp-withdraw", { onclick: () => void withdraw(burn.value) }, "Withdraw")),
    );
  }

  async function provide(text: string): Promise<void> {
    let amount: bigint;
    try {
      amount = usdcOf(ctx, text);
    } catch (err) {
      return notice(perpStatus, "error", (err as Error).message);
    }
    if (!(await holds(app, perpStatus, amount, "providing"))) return;
    const [total, value] = await Promise.all([
      ctx.client.readContract({ ...perp, functionName: "total_shares" }),
      ctx.client.readContract({ ...perp, functionName: "pool_value", args: [true] }),
    ]);
    // 1 % below the shares the pool's value gives now (the value moves with the TWAP).
    const minShares = total && value ? ((amount * total) / value) * 99n / 100n : 0n;
    if (!(await ensureAllowance(app, perpStatus, ctx.usdc, perpAddress, amount))) return;
    const ok = await send(ctx, wallet.client!, wallet.account!, perpStatus, `Provide ${usd(amount)} USDC of liquidity`, { ...perp, functionName: "deposit", args: [amount, minShares] });
    if (ok) void reloadPerp();
  }

  async function withdraw(text: string): Promise<void> {
    let shares: bigint;
    try {
      shares = parseAmount(text, SHARE_DECIMALS, "pool shares");
    } catch (err) {
      return notice(perpStatus, "error", (err as Error).message);
    }
    const [total, value] = await Promise.all([
      ctx.client.readContract({ ...perp, functionName: "total_shares" }),
      ctx.client.readContract({ ...perp, functionName: "pool_value", args: [false] }),
    ]);
    const min = total ? ((shares * value) / total) * 99n / 100n : 0n;
    const ok = await send(ctx, wallet.client!, wallet.account!, perpStatus, `Withdraw ${amountText(shares, SHARE_DECIMALS, 4)} pool shares`, { ...perp, functionName: "withdraw", args: [shares, min] });
    if (ok) void reloadPerp();
  }

  async function reloadPerp(): Promise<void> {
    await drawMarkets();
    await Promise.all([drawPositions(), drawLp()]);
  }

  // ─── Options ───────────────────────────────────────────────────────────────

  const chainNow = async () => Number((await ctx.client.getBlock({ blockTag: "latest" })).timestamp);
  const kindName = (kind: number) => (kind === CALL ? "capped call" : kind === PUT ? "put" : String(kind));
  let twapWindow: bigint | null = null;

  /** The series' payout per unit at the token's TWAP now (null while the Oracle does not cover the window). */
  async function valueNow(s: { token: Address; kind: number; strike: bigint; bound: bigint; size: bigint }): Promise<bigint | null> {
    twapWindow ??= await ctx.client.readContract({ ...options, functionName: "twap_window" });
    const price = await ctx.client.readContract({ address: ctx.config.contracts.Oracle, abi: oracleAbi, functionName: "consult", args: [s.token, twapWindow] }).catch(() => null);
    if (price === null) return null;
    const lo = (a: bigint, b: bigint) => (a < b ? a : b);
    const hi = (a: bigint, b: bigint) => (a > b ? a : b);
    const intrinsic = s.kind === CALL ? lo(price, s.bound) - lo(price, s.strike) : hi(price, s.strike) - hi(price, s.bound);
    return (intrinsic * s.size) / PRICE_SCALE;
  }

  /** A series by a short name, as exchanges write them: GPT-06DEC26-3.5/4.5-C (token, expiry in
   *  UTC, strike and cap or floor in dollars, C or P); its 77-digit id stays in a tooltip. */
  const seriesName = (s: { token: Address; kind: number; strike: bigint; bound: bigint; expiry: bigint }) => {
    const day = new Date(Number(s.expiry) * 1000);
    const month = day.toLocaleString("en-US", { month: "short", timeZone: "UTC" }).toUpperCase();
    const date = `${String(day.getUTCDate()).padStart(2, "0")}${month}${String(day.getUTCFullYear()).slice(2)}`;
    const price = (p: bigint) => dollars(p).replace("$", "").replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
    const bound = s.kind === PUT && s.bound === 0n ? "" : `/${price(s.bound)}`;
    return `${sym(s.token)}-${date}-${price(s.strike)}${bound}-${s.kind === CALL ? "C" : "P"}`;
  };

  const termsCells = (s: { token: Address; kind: number; strike: bigint; bound: bigint; expiry: bigint; size: bigint }) => [
    h("td", {}, kindName(s.kind)),
    h("td", {}, sym(s.token)),
    h("td.num", {}, dollars(s.strike)),
    h("td.num", {}, s.kind === PUT && s.bound === 0n ? "none" : dollars(s.bound)),
    h("td", {}, new Date(Number(s.expiry) * 1000).toISOString().slice(0, 16).replace("T", " ")),
    h("td.num", {}, `${amountText(s.size, 18, 2)} tokens`),
  ];

  async function drawOffers(): Promise<void> {
    const count = await ctx.client.readContract({ ...options, functionName: "offer_count" });
    const now = BigInt(await chainNow());
    const all = await Promise.all(ids(count).map(async (id) => ({ id, o: await ctx.client.readContract({ ...options, functionName: "offers", args: [id] }) })));
    const open = all.filter(({ o }) => o.units > 0n);
    const withSeries = await Promise.all(open.map(async (x) => ({ ...x, s: await ctx.client.readContract({ ...options, functionName: "series", args: [x.o.series_id] }) })));
    const live = withSeries.filter(({ s }) => s.expiry > now);
    if (!live.length) return notice(offers, "info", "No open offers. Writers offer units below.");
    const values = await Promise.all(live.map(({ s }) => valueNow(s)));
    const me = wallet.account?.toLowerCase();
    offers.className = "";
    offers.replaceChildren(
      h(
        "table#option-offer-table",
        {},
        h("thead", {}, h("tr", {}, ...["Offer", "Kind", "Token", "Strike", "Cap / floor", "Expiry (UTC)", "Size / unit", "Units left", "Premium / unit", "Worth now / unit", "Buy"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          ...live.map(({ id, o, s }, i) => {
            const units = h("input", { "data-buy-units": String(id), size: 4, value: "1" });
            return h(
              "tr",
              { "data-offer": String(id) },
              h("td", { title: `series ${o.series_id}` }, `${id}: ${seriesName(s)}`),
              ...termsCells(s),
              h("td.num", {}, String(o.units)),
              h("td.num", {}, `${usd(o.premium_per_unit)} USDC`),
              h("td.num", {}, values[i] === null ? "no TWAP yet" : `${usd(values[i]!)} USDC`),
              o.seller.toLowerCase() === me
                ? h("td.muted", {}, "your offer")
                : h("td", {}, units, " ", h("button", { "data-action": "buy", "data-offer": String(id), disabled: !me, onclick: () => void buy(id, o.premium_per_unit, units.value) }, "Buy")),
            );
          }),
        ),
      ),
    );
  }

  async function buy(offerId: bigint, premium: bigint, text: string): Promise<void> {
    if (!/^\d+$/.test(text.trim()) || BigInt(text.trim()) === 0n) return notice(optionStatus, "error", "Enter a whole number of units to buy.");
    const units = BigInt(text.trim());
    const cost = units * premium;
    if (cost > 0n) {
      if (!(await holds(app, optionStatus, cost, "the premium"))) return;
      if (!(await ensureAllowance(app, optionStatus, ctx.usdc, optionsAddress, cost))) return;
    }
    const ok = await send(ctx, wallet.client!, wallet.account!, optionStatus, `Buy ${units} units of offer ${offerId} for ${usd(cost)} USDC`, { ...options, functionName: "buy", args: [offerId, units] });
    if (ok) void reloadOptions();
  }

  async function drawHoldings(): Promise<void> {
    const account = wallet.account;
    if (!account) return void holdings.replaceChildren("");
    const events = await ctx.client.getContractEvents({ ...options, eventName: "SeriesCreated", fromBlock: BigInt(ctx.config.deployment_block ?? 0) });
    const seriesIds = [...new Set(events.map((e) => e.args.series_id!))];
    const now = BigInt(await chainNow());
    const rowsData = (
      await Promise.all(
        seriesIds.map(async (id) => {
          const [s, held, written] = await Promise.all([
            ctx.client.readContract({ ...options, functionName: "series", args: [id] }),
            ctx.client.readContract({ ...options, functionName: "balanceOf", args: [account, id] }),
            ctx.client.readContract({ ...options, functionName: "written", args: [id, account] }),
          ]);
          return { id, s, held, written };
        }),
      )
    ).filter(({ held, written }) => held > 0n || written > 0n);
    if (!rowsData.length) return notice(holdings, "info", "You hold and have written no options.");
    const values = await Promise.all(rowsData.map(({ s }) => (s.settled ? Promise.resolve(s.payout_per_unit) : valueNow(s))));
    holdings.className = "";
    holdings.replaceChildren(
      h(
        "table#option-holding-table",
        {},
        h("thead", {}, h("tr", {}, ...["Series", "Kind", "Token", "Strike", "Cap / floor", "Expiry (UTC)", "Size / unit", "Units held", "Written", "Value", "Action"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          ...rowsData.map(({ id, s, held, written }, i) => {
            const perUnit = values[i];
            const key = id.toString();
            const actions: (HTMLElement | string)[] = [];
            if (!s.settled && s.expiry < now) actions.push(h("button.secondary", { "data-action": "settle", "data-series": key, onclick: () => void settle(id) }, "Settle"));
            if (s.settled && held > 0n) actions.push(h("button", { "data-action": "claim", "data-series": key, onclick: () => void simple("claim", id) }, "Claim"));
            if (s.settled && written > 0n) actions.push(h("button.secondary", { "data-action": "reclaim", "data-series": key, onclick: () => void simple("reclaim", id) }, "Reclaim"));
            const value = perUnit === null ? "no TWAP yet" : s.settled ? `settled at ${dollars(s.settlement_price)}: pays ${usd(perUnit * held)} USDC` : `${usd(perUnit * held)} USDC at the TWAP`;
            return h(
              "tr",
              { "data-holding": key },
              h("td", { title: `series ${key}`, "data-series-name": key }, seriesName(s)),
              ...termsCells(s),
              h("td.num", { "data-units": key }, String(held)),
              h("td.num", {}, String(written)),
              h("td.num", { "data-value": key }, value),
              h("td", {}, ...(actions.length ? actions : [s.expiry > now ? "open until expiry" : ""])),
            );
          }),
        ),
      ),
      h("p.muted", {}, "Value: units held × what a unit pays at the Oracle's TWAP now (before expiry), or its settled payout. Writers reclaim collateral minus payouts after settlement."),
    );
  }

  async function settle(id: bigint): Promise<void> {
    const account = wallet.account!;
    const client = wallet.client!;
    // The ranks of the Oracle observations the series settles on (recorded at or before
    // expiry; a late series settles at the TWAP then). No Oracle update is needed first.
    let found: readonly [bigint, bigint];
    try {
      found = await ctx.client.readContract({ ...options, functionName: "settlement_ranks", args: [id] });
    } catch (err) {
      return notice(optionStatus, "error", explain(err));
    }
    const ok = await send(ctx, client, account, optionStatus, "Settle the series", { ...options, functionName: "settle", args: [id, found[0], found[1]] });
    if (ok) void reloadOptions();
  }

  async function simple(action: "claim" | "reclaim", id: bigint): Promise<void> {
    const label = action === "claim" ? "Claim the payout" : "Reclaim the collateral";
    const ok = await send(ctx, wallet.client!, wallet.account!, optionStatus, label, { ...options, functionName: action, args: [id] });
    if (ok) void reloadOptions();
  }

  function drawWrite(): void {
    if (gate) return void writeBox.replaceChildren("Connect a wallet to write options.");
    const tokenSel = h("select#write-token", {}, ...tokens.map((t) => h("option", { value: t.symbol, selected: t.symbol === "GPT" }, t.symbol)));
    const kind = h("select#write-kind", {}, h("option", { value: "call" }, "capped call"), h("option", { value: "put" }, "put"));
    const strike = h("input#write-strike", { size: 8, placeholder: "$ / token" });
    const bound = h("input#write-bound", { size: 8, placeholder: "cap or floor" });
    const days = h("input#write-days", { size: 4, value: "30" });
    const size = h("input#write-size", { size: 8, value: "1000" });
    const units = h("input#write-units", { size: 5, value: "10" });
    const premium = h("input#write-premium", { size: 8, placeholder: "optional" });
    const summary = h("div#write-summary.quote", {}, "Enter the terms.");
    const read = () => {
      const token = ctx.asset(tokenSel.value);
      const k = kind.value === "call" ? CALL : PUT;
      const st = priceOf(strike.value, "strike");
      const bd = priceOf(bound.value, k === CALL ? "cap" : "floor", k === PUT);
      const d = Number(days.value);
      if (!(Number.isInteger(d) && d >= 1 && d <= 730)) throw new Error("Expiry: a whole number of days between 1 and 730");
      const sz = parseAmount(size.value, 18, token.symbol);
      if (!/^\d+$/.test(units.value.trim()) || BigInt(units.value.trim()) === 0n) throw new Error("Units: a whole number above zero");
      const n = BigInt(units.value.trim());
      if (k === CALL && bd <= st) throw new Error("A capped call's cap must be above its strike");
      if (k === PUT && bd >= st) throw new Error("A put's floor must be below its strike (0 for none)");
      const spread = k === CALL ? bd - st : st - bd;
      if ((spread * sz) % PRICE_SCALE !== 0n) throw new Error("The collateral per unit is not a whole USDC unit: change the strike, the bound or the size");
      const prem = premium.value.trim() ? (Number(premium.value) === 0 ? 0n : usdcOf(ctx, premium.value)) : null;
      return { token, k, st, bd, d, sz, n, collateral: (spread * sz) / PRICE_SCALE, prem };
    };
    const describe = () => {
      try {
        const t = read();
        notice(summary, "info", `Collateral: ${usd(t.collateral)} USDC a unit, `, h("strong#write-collateral", {}, `${usd(t.collateral * t.n)} USDC`), ` for ${t.n} units (the most they can pay)`, t.prem === null ? "" : `; offered at ${usd(t.prem)} USDC a unit`);
      } catch (err) {
        notice(summary, "info", (err as Error).message);
      }
    };
    for (const el of [strike, bound, days, size, units, premium]) el.addEventListener("input", describe);
    for (const el of [tokenSel, kind]) el.addEventListener("change", describe);

    async function write(): Promise<void> {
      let t: ReturnType<typeof read>;
      try {
        t = read();
      } catch (err) {
        return notice(optionStatus, "error", `${(err as Error).message}. Nothing was sent.`);
      }
      const account = wallet.account!;
      const client = wallet.client!;
      const expiry = BigInt(Math.floor((await chainNow()) / 3600) * 3600 + t.d * 86_400); // whole hours, as the CLI: one series per day and terms
      const args = [t.token.address, t.k, t.st, t.bd, expiry, t.sz] as const;
      const id = await ctx.client.readContract({ ...options, functionName: "series_id", args });
      const existing = await ctx.client.readContract({ ...options, functionName: "series", args: [id] });
      if (!(await holds(app, optionStatus, t.collateral * t.n, "the collateral"))) return;
      if (existing.expiry === 0n && !(await send(ctx, client, account, optionStatus, "Create the series", { ...options, functionName: "create_series", args }))) return;
      if (!(await ensureAllowance(app, optionStatus, ctx.usdc, optionsAddress, t.collateral * t.n))) return;
      if (!(await send(ctx, client, account, optionStatus, `Write ${t.n} units (${usd(t.collateral * t.n)} USDC collateral)`, { ...options, functionName: "write", args: [id, t.n] }))) return void reloadOptions();
      if (t.prem !== null) await send(ctx, client, account, optionStatus, `Offer ${t.n} units at ${usd(t.prem)} USDC`, { ...options, functionName: "offer", args: [id, t.n, t.prem] });
      void reloadOptions();
    }
    writeBox.replaceChildren(
      h(
        "div.row",
        {},
        h("label", {}, "Token ", tokenSel),
        h("label", {}, "Kind ", kind),
        h("label", {}, "Strike $ ", strike),
        h("label", {}, "Cap / floor $ ", bound),
        h("label", {}, "Expiry in ", days, " days"),
      ),
      h("div.row", {}, h("label", {}, "Size ", size, " tokens / unit"), h("label", {}, "Units ", units), h("label", {}, "Premium ", premium, " USDC / unit"), h("button#write-button", { onclick: () => void write() }, "Write (and offer)")),
      summary,
    );
  }

  async function reloadOptions(): Promise<void> {
    await Promise.all([drawOffers(), drawHoldings()]);
  }

  void drawMarkets()
    .then(() => {
      drawOpen();
      return Promise.all([drawPositions(), drawLp()]);
    })
    .catch((err) => notice(markets, "error", `Cannot read the perpetual: ${explain(err)}`));
  drawWrite();
  void reloadOptions().catch((err) => notice(offers, "error", `Cannot read the options market: ${explain(err)}`));
};
