// Market: every pool with its price, TWAPs and a TWAP chart; swap any two assets through
// the Router (one hop to or from USDC, two hops between provider tokens) with a quote,
// price impact and min_out from the slippage setting; add liquidity to a pool at its
// current ratio and remove a share of the wallet's LP units, both through the Router.
import type { Address } from "viem";
import { erc20Abi, poolAbi, routerAbi } from "../abi";
import { api, type AssetInfo, type Pool } from "../api";
import { explain, send, type Ctx } from "../chain";
import { parseAmount } from "../format";
import { amountText, money, usdText } from "../money";
import { loadPrices, type Prices } from "../prices";
import type { App, Page } from "../main";
import { h, notice } from "../ui";
import { walletGate } from "../wallet";

export interface Quote {
  from: AssetInfo;
  to: AssetInfo;
  amountIn: bigint;
  amountOut: bigint;
  minOut: bigint;
  path: Address[];
  fees: bigint[];
  impact: number; // fraction, e.g. 0.0123
  slippageBps: bigint;
}

function sparkline(points: { t: number; price: string }[]): SVGSVGElement | string {
  if (points.length < 2) return "not enough history";
  const values = points.map((p) => Number(p.price));
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const w = 120;
  const hgt = 28;
  const xs = points.map((_, i) => (i / (points.length - 1)) * w);
  const ys = values.map((v) => (hi === lo ? hgt / 2 : hgt - ((v - lo) / (hi - lo)) * (hgt - 2) - 1));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("class", "spark");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", xs.map((x, i) => `${x.toFixed(1)},${ys[i].toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

/** A price the server sends as a decimal string of dollars per whole token, in dollars
 *  (to the micro-dollar, rounded down: string arithmetic, no float). */
function price(text: string | null | undefined): string {
  if (!text) return "—";
  const [whole, frac = ""] = text.split(".");
  return usdText(parseAmount(`${whole}.${frac.slice(0, 6).padEnd(6, "0")}`, 6, "USD", true));
}

function change(p: Pool): string {
  const day = p.twap["86400"];
  if (!day) return "—";
  const pct = (Number(p.price) / Number(day) - 1) * 100;
  return `${pct >= 0 ? "+" : ""}${pct.toFixed(2)} %`;
}

/** The route and the quote for `amountIn` of `from` into `to` at current reserves. */
export async function quote(ctx: Ctx, pools: Pool[], from: AssetInfo, to: AssetInfo, amountIn: bigint, slippageBps: bigint): Promise<Quote> {
  const usdc = ctx.usdc;
  const poolOf = (token: Address) => {
    const pool = pools.find((p) => p.token.toLowerCase() === token.toLowerCase());
    if (!pool) throw new Error(`no pool trades ${token}`);
    return pool;
  };
  const hops: [AssetInfo, AssetInfo][] =
    from.kind === "usdc" || to.kind === "usdc" ? [[from, to]] : [[from, usdc], [usdc, to]];
  const path: Address[] = [hops[0][0].address, ...hops.map(([, b]) => b.address)];
  const fees = hops.map(([a, b]) => BigInt(poolOf(a.kind === "usdc" ? b.address : a.address).fee));
  const amounts = await ctx.client.readContract({
    address: ctx.config.contracts.Router,
    abi: routerAbi,
    functionName: "get_amounts_out",
    args: [amountIn, path, fees],
  });
  const amountOut = amounts[amounts.length - 1];
  // Price impact: the quote against the pools' mid prices (fees excluded), hop by hop.
  const denominator = Number(await ctx.client.readContract({ address: ctx.config.contracts.Router, abi: routerAbi, functionName: "FEE_DENOMINATOR" }));
  let ideal = Number(amountIn);
  hops.forEach(([a, b], i) => {
    const pool = poolOf(a.kind === "usdc" ? b.address : a.address);
    const [rIn, rOut] = a.kind === "usdc" ? [pool.usdc_reserve, pool.token_reserve] : [pool.token_reserve, pool.usdc_reserve];
    ideal = (ideal * Number(rOut)) / Number(rIn) * (1 - Number(fees[i]) / denominator);
  });
  const impact = Math.max(0, 1 - Number(amountOut) / ideal);
  const minOut = (amountOut * (10_000n - slippageBps)) / 10_000n;
  return { from, to, amountIn, amountOut, minOut, path, fees, impact, slippageBps };
}

export const marketPage: Page = (root, app) => {
  const poolsBox = h("div#pools", {}, "Loading pools…");
  const swapBox = h("div.card#swap");
  const liquidityBox = h("div.card#liquidity");
  root.append(h("h1", {}, "Market"), poolsBox, h("h2", {}, "Swap"), swapBox, h("h2", {}, "Liquidity"), liquidityBox);
  void Promise.all([api.pools(), loadPrices(app.ctx)])
    .then(([pools, prices]) => {
      poolsBox.replaceChildren(
        h(
          "table#pool-table",
          {},
          h("thead", {}, h("tr", {}, ...["Pool", "Price", "TWAP 5 min", "TWAP 1 h", "vs 24 h average", "Reserves", "TWAP chart"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            ...pools.map((p) =>
              h(
                "tr",
                { "data-pool": p.symbol },
                h("th", {}, `${p.symbol}/USDC`, h("small", {}, ` ${(p.fee / 100).toFixed(2)} %`)),
                h("td.num", { "data-price": p.symbol }, price(p.price)),
                h("td.num", {}, price(p.twap["300"])),
                h("td.num", {}, price(p.twap["3600"])),
                h("td.num", {}, change(p)),
                h("td.num", {}, `${prices.plain(p.token_reserve, p.symbol)} / ${prices.plain(p.usdc_reserve, "USDC")}`),
                h("td", {}, sparkline(p.history)),
              ),
            ),
          ),
        ),
      );
      drawSwap(swapBox, app, pools, prices);
      drawLiquidity(liquidityBox, app, pools, prices);
    })
    .catch((err) => notice(poolsBox, "error", `Cannot read the pools: ${err.message}`));
};

function drawSwap(box: HTMLElement, app: App, pools: Pool[], prices: Prices): void {
  const { ctx, wallet } = app;
  const gate = walletGate(wallet, ctx);
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const options = (selected: string) => ctx.assets.map((a) => h("option", { value: a.symbol, selected: a.symbol === selected }, a.symbol));
  const fromSel = h("select#swap-from", {}, ...options(params.get("from") ?? "USDC"));
  const toSel = h("select#swap-to", {}, ...options(params.get("from") && params.get("from") !== "USDC" ? "USDC" : "CLD"));
  const amount = h("input#swap-amount", { inputmode: "decimal", placeholder: "amount in", size: 12 });
  const slippage = h("input#swap-slippage", { value: "0.5", size: 4, inputmode: "decimal" });
  const quoteBox = h("div#swap-quote.quote", {}, "Enter an amount for a quote.");
  const status = h("div#swap-status.notice", { role: "status" });
  const button = h("button#swap-button", { disabled: true }, "Swap");
  let current: Quote | null = null;
  let seq = 0;

  async function refreshQuote(): Promise<void> {
    const mine = ++seq;
    current = null;
    button.disabled = true;
    const from = ctx.asset(fromSel.value);
    const to = ctx.asset(toSel.value);
    if (from.symbol === to.symbol) return notice(quoteBox, "error", "Pick two different assets.");
    if (!amount.value.trim()) return notice(quoteBox, "info", "Enter an amount for a quote.");
    let amountIn: bigint;
    let bps: bigint;
    try {
      amountIn = parseAmount(amount.value, from.decimals, from.symbol);
      const pct = Number(slippage.value);
      if (!(pct >= 0 && pct < 50)) throw new Error("Slippage is a percentage between 0 and 50");
      bps = BigInt(Math.round(pct * 100));
    } catch (err) {
      return notice(quoteBox, "error", (err as Error).message);
    }
    try {
      const q = await quote(ctx, pools, from, to, amountIn, bps);
      if (mine !== seq) return;
      current = q;
      button.disabled = wallet.account === null;
      const route = [from.symbol, ...(q.path.length === 3 ? ["USDC"] : []), to.symbol].join(" → ");
      notice(
        quoteBox,
        "info",
        h("div", {}, "Route: ", h("strong#quote-route", {}, route), q.path.length === 3 ? " (two hops)" : ""),
        h("div", {}, "You receive about ", h("strong#quote-out", { "data-units": q.amountOut.toString() }, prices.money(q.amountOut, to.symbol))),
        h("div", { class: q.impact > 0.05 ? "warn" : "" }, "Price impact: ", h("span#quote-impact", {}, `${(q.impact * 100).toFixed(2)} %`)),
        h("div", {}, `Minimum received at ${(Number(bps) / 100).toFixed(2)} % slippage: `, h("span#quote-min", { "data-units": q.minOut.toString() }, prices.money(q.minOut, to.symbol, { rounding: "down" }))),
      );
    } catch (err) {
      if (mine === seq) notice(quoteBox, "error", `No quote: ${explain(err)}`);
    }
  }

  async function swap(): Promise<void> {
    const q = current;
    const account = wallet.account;
    const client = wallet.client;
    if (!q || !account || !client) return;
    const balance = await ctx.client.readContract({ address: q.from.address, abi: erc20Abi, functionName: "balanceOf", args: [account] });
    if (balance < q.amountIn) {
      return notice(status, "error", `Insufficient balance: your wallet holds ${money(balance, q.from.symbol, { rounding: "down" })}. Nothing was sent.`);
    }
    const router = ctx.config.contracts.Router;
    const allowance = await ctx.client.readContract({ address: q.from.address, abi: erc20Abi, functionName: "allowance", args: [account, router] });
    if (allowance < q.amountIn) {
      const ok = await send(ctx, client, account, status, `Approve ${q.from.symbol}`, { address: q.from.address, abi: erc20Abi, functionName: "approve", args: [router, q.amountIn] });
      if (!ok) return;
    }
    const block = await ctx.client.getBlock({ blockTag: "latest" });
    const deadline = BigInt(Math.max(Number(block.timestamp), Math.floor(Date.now() / 1000))) + 600n;
    const hash = await send(ctx, client, account, status, `Swap ${money(q.amountIn, q.from.symbol)} for ${q.to.symbol}`, {
      address: router,
      abi: routerAbi,
      functionName: "swap_exact_in",
      args: [q.amountIn, q.minOut, q.path, q.fees, account, deadline],
    });
    if (hash) void refreshQuote();
  }

  for (const el of [fromSel, toSel, slippage]) el.addEventListener("change", () => void refreshQuote());
  let debounce = 0;
  amount.addEventListener("input", () => {
    // A quote for another amount must never be the one a click swaps at.
    seq++;
    current = null;
    button.disabled = true;
    notice(quoteBox, "pending", "Quoting…");
    clearTimeout(debounce);
    debounce = window.setTimeout(() => void refreshQuote(), 250);
  });
  button.addEventListener("click", () => void swap());
  box.replaceChildren(
    ...(gate ? [gate] : []),
    h("div.row", {}, h("label", {}, "From ", fromSel), h("label", {}, "Amount ", amount), h("label", {}, "To ", toSel), h("label", {}, "Slippage % ", slippage)),
    quoteBox,
    button,
    status,
  );
}

async function deadline(ctx: Ctx): Promise<bigint> {
  const block = await ctx.client.getBlock({ blockTag: "latest" });
  return BigInt(Math.max(Number(block.timestamp), Math.floor(Date.now() / 1000))) + 600n;
}

/** Add liquidity at the pool's ratio (the USDC side follows the token amount) and remove a share of the LP units. */
function drawLiquidity(box: HTMLElement, app: App, initial: Pool[], prices: Prices): void {
  const { ctx, wallet } = app;
  const gate = walletGate(wallet, ctx);
  if (gate) return void box.replaceChildren(gate);
  const account = wallet.account!;
  const client = wallet.client!;
  const router = ctx.config.contracts.Router;
  let pools = initial;
  const poolSel = h("select#lp-pool", {}, ...pools.map((p) => h("option", { value: p.symbol }, `${p.symbol}/USDC`)));
  const tokenAmount = h("input#lp-token-amount", { inputmode: "decimal", placeholder: "token amount", size: 12 });
  const usdcSide = h("span#lp-usdc-amount.muted", {}, "");
  const slippage = h("input#lp-slippage", { value: "1", size: 4, inputmode: "decimal" });
  const removePct = h("input#lp-remove-pct", { value: "50", size: 4, inputmode: "decimal" });
  const position = h("div#lp-position.quote");
  const status = h("div#lp-status.notice", { role: "status" });
  const pool = () => pools.find((p) => p.symbol === poolSel.value)!;

  /** USDC units matching `amount` token units at the pool's reserves (the Router's quote, rounded down). */
  const usdcFor = (p: Pool, amount: bigint) => (amount * BigInt(p.usdc_reserve)) / BigInt(p.token_reserve);
  const bps = (): bigint => {
    const pct = Number(slippage.value);
    if (!(pct >= 0 && pct < 50)) throw new Error("Slippage is a percentage between 0 and 50");
    return BigInt(Math.round(pct * 100));
  };

  async function drawPosition(): Promise<void> {
    const p = pool();
    const [lp, supply] = await Promise.all([
      ctx.client.readContract({ address: p.address, abi: poolAbi, functionName: "balanceOf", args: [account] }),
      ctx.client.readContract({ address: p.address, abi: poolAbi, functionName: "totalSupply" }),
    ]);
    const share = supply ? (lp * 1_000_000n) / supply : 0n;
    const tokenPart = supply ? (lp * BigInt(p.token_reserve)) / supply : 0n;
    const usdcPart = supply ? (lp * BigInt(p.usdc_reserve)) / supply : 0n;
    notice(
      position,
      "info",
      h("div", {}, "Your LP units: ", h("strong#lp-balance", { "data-lp": lp.toString() }, amountText(lp, 18, 6)), ` (${(Number(share) / 10_000).toFixed(4)} % of the pool)`),
      h("div", {}, "Worth about ", h("span#lp-worth", {}, `${prices.plain(tokenPart, p.symbol)} + ${prices.plain(usdcPart, "USDC")}`), ` at current reserves (${prices.total([{ amount: tokenPart, symbol: p.symbol }, { amount: usdcPart, symbol: "USDC" }]).text})`),
    );
  }

  async function reloadPools(): Promise<void> {
    pools = await api.pools();
    await drawPosition();
  }

  function drawSide(): void {
    try {
      const amount = parseAmount(tokenAmount.value, 18, pool().symbol);
      usdcSide.textContent = `+ ${money(usdcFor(pool(), amount), "USDC")} at the pool's ratio`;
    } catch {
      usdcSide.textContent = "";
    }
  }

  async function add(): Promise<void> {
    pools = await api.pools(); // the ratio at this moment, not the page's first reading
    const p = pool();
    const token = ctx.asset(p.symbol);
    let amountToken: bigint;
    let slip: bigint;
    try {
      amountToken = parseAmount(tokenAmount.value, token.decimals, token.symbol);
      slip = bps();
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    const amountUsdc = usdcFor(p, amountToken);
    if (amountUsdc === 0n) return notice(status, "error", "That amount is too small to match any USDC at this pool's price.");
    for (const [asset, need] of [[token, amountToken], [ctx.usdc, amountUsdc]] as const) {
      const have = await ctx.client.readContract({ address: asset.address, abi: erc20Abi, functionName: "balanceOf", args: [account] });
      if (have < need) {
        return notice(status, "error", `Insufficient balance: adding needs ${money(need, asset.symbol, { rounding: "up" })}; your wallet holds ${money(have, asset.symbol, { rounding: "down" })}. Nothing was sent.`);
      }
    }
    for (const [asset, need] of [[token, amountToken], [ctx.usdc, amountUsdc]] as const) {
      const allowance = await ctx.client.readContract({ address: asset.address, abi: erc20Abi, functionName: "allowance", args: [account, router] });
      if (allowance < need && !(await send(ctx, client, account, status, `Approve ${asset.symbol}`, { address: asset.address, abi: erc20Abi, functionName: "approve", args: [router, need] }))) return;
    }
    const min = (x: bigint) => (x * (10_000n - slip)) / 10_000n;
    const ok = await send(ctx, client, account, status, `Add ${money(amountToken, token.symbol)} + ${money(amountUsdc, "USDC")}`, {
      address: router,
      abi: routerAbi,
      functionName: "add_liquidity",
      args: [token.address, ctx.usdc.address, BigInt(p.fee), amountToken, amountUsdc, min(amountToken), min(amountUsdc), account, await deadline(ctx)],
    });
    if (ok) await reloadPools();
  }

  async function remove(): Promise<void> {
    pools = await api.pools();
    const p = pool();
    const token = ctx.asset(p.symbol);
    let slip: bigint;
    const pct = Number(removePct.value);
    try {
      if (!(pct > 0 && pct <= 100)) throw new Error("Remove a share between 0 and 100 %");
      slip = bps();
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    const [lp, supply] = await Promise.all([
      ctx.client.readContract({ address: p.address, abi: poolAbi, functionName: "balanceOf", args: [account] }),
      ctx.client.readContract({ address: p.address, abi: poolAbi, functionName: "totalSupply" }),
    ]);
    const units = (lp * BigInt(Math.round(pct * 100))) / 10_000n;
    if (units === 0n) return notice(status, "error", "You hold no LP units in this pool. Nothing was sent.");
    const allowance = await ctx.client.readContract({ address: p.address, abi: poolAbi, functionName: "allowance", args: [account, router] });
    if (allowance < units && !(await send(ctx, client, account, status, "Approve the LP units", { address: p.address, abi: poolAbi, functionName: "approve", args: [router, units] }))) return;
    const min = (reserve: string) => ((units * BigInt(reserve)) / supply * (10_000n - slip)) / 10_000n;
    const ok = await send(ctx, client, account, status, `Remove ${pct} % of your ${p.symbol}/USDC liquidity`, {
      address: router,
      abi: routerAbi,
      functionName: "remove_liquidity",
      args: [token.address, ctx.usdc.address, BigInt(p.fee), units, min(p.token_reserve), min(p.usdc_reserve), account, await deadline(ctx)],
    });
    if (ok) await reloadPools();
  }

  poolSel.addEventListener("change", () => { drawSide(); void drawPosition(); });
  tokenAmount.addEventListener("input", drawSide);
  box.replaceChildren(
    h("div.row", {}, h("label", {}, "Pool ", poolSel), h("label", {}, "Add ", tokenAmount), usdcSide, h("label", {}, "Slippage % ", slippage), h("button#add-liquidity", { onclick: () => void add() }, "Add liquidity")),
    h("div.row", {}, h("label", {}, "Remove ", removePct, " % of your LP units"), h("button.secondary#remove-liquidity", { onclick: () => void remove() }, "Remove liquidity")),
    position,
    status,
  );
  void drawPosition().catch((err) => notice(position, "error", `Cannot read your position: ${err.message}`));
}
