// Portfolio / vault: wallet and vault balances, deposit, trustless withdrawal with its
// thaw countdown; provider tokens are spend/sell-only, so they show "use or sell", and
// "sell from the vault": the trustless exit sold for USDC through the exit market fixed at
// request, its quote and minimum out shown before completing. When a provider's lots left
// tokens unbacked, its holders may sell them to the insurance fund (the buy-back) at the
// token's fixed bond share of face value, one rate for all.
import type { Address } from "viem";
import { erc20Abi, escrowAbi, mockUsdcAbi, routerAbi, vaultAbi } from "../abi";
import { api, type AssetInfo } from "../api";
import { explain, isRejection, send, type Ctx } from "../chain";
import { EXIT_REQUEST_SECONDS, exitRequestBody, exitRequestTypedData } from "../exit";
import { duration, parseAmount } from "../format";
import { balance, money, usdText } from "../money";
import { loadPrices } from "../prices";
import type { App, Page } from "../main";
import { h, notice } from "../ui";
import { walletGate } from "../wallet";

interface Row {
  asset: AssetInfo;
  wallet: bigint;
  vault: bigint;
  exit: { amount: bigint; unlock_at: bigint; market: Address };
  // Provider tokens: what the escrow counts as unbacked, and the fund's USDC for one whole token now.
  unbacked: bigint;
  buyBackRate: bigint;
}

// The least a sale from the vault may bring, below its quote (the CLI's swap default): the
// pool may move between the quote and the block.
const EXIT_SLIPPAGE_BPS = 50n;
const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";

/** What a pending exit of a provider token would sell for now through the market fixed at
 *  its request: null when that market is not this deployment's Router (nothing to quote it
 *  with) or the pool cannot quote it. */
export interface ExitQuote {
  selling: bigint; // the exit's amount, or the whole balance if settlements debited it below
  quote: bigint; // USDC
  minOut: bigint; // USDC: the quote less EXIT_SLIPPAGE_BPS, rounded down
}

async function exitQuote(ctx: Ctx, row: Row): Promise<ExitQuote | null> {
  const router = ctx.config.contracts.Router;
  const selling = row.exit.amount < row.vault ? row.exit.amount : row.vault;
  if (!router || selling === 0n || row.exit.market.toLowerCase() !== router.toLowerCase()) return null;
  try {
    const fee = await ctx.client.readContract({ address: router, abi: routerAbi, functionName: "EXIT_FEE" });
    const amounts = await ctx.client.readContract({
      address: router,
      abi: routerAbi,
      functionName: "get_amounts_out",
      args: [selling, [row.asset.address, ctx.usdc.address], [fee]],
    });
    const quote = amounts[amounts.length - 1];
    return { selling, quote, minOut: (quote * (10_000n - EXIT_SLIPPAGE_BPS)) / 10_000n };
  } catch {
    return null; // no pool, or too little liquidity to quote
  }
}

async function chainNow(ctx: Ctx): Promise<number> {
  const block = await ctx.client.getBlock({ blockTag: "latest" });
  return Number(block.timestamp);
}

async function readRows(ctx: Ctx, account: Address): Promise<Row[]> {
  const vault = ctx.config.contracts.CreditsVault;
  return Promise.all(
    ctx.assets.map(async (asset) => {
      const [wallet, inVault, pending, unlockAt] = await Promise.all([
        ctx.client.readContract({ address: asset.address, abi: erc20Abi, functionName: "balanceOf", args: [account] }),
        ctx.client.readContract({ address: vault, abi: vaultAbi, functionName: "balance_of", args: [account, asset.address] }),
        ctx.client.readContract({ address: vault, abi: vaultAbi, functionName: "pending_exits", args: [account, asset.address] }),
        // A pause delays a thaw (by at most the vault's MAX_PAUSE): the vault says when it unlocks.
        ctx.client.readContract({ address: vault, abi: vaultAbi, functionName: "exit_unlocks_at", args: [account, asset.address] }),
      ]);
      let unbacked = 0n;
      let buyBackRate = 0n;
      const escrow = ctx.config.contracts.CreditEscrow;
      if (asset.kind !== "usdc" && escrow) {
        unbacked = await ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "unbacked", args: [asset.address] });
        if (unbacked > 0n) {
          const one = 10n ** BigInt(asset.decimals);
          buyBackRate = await ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "quote_buy_back", args: [asset.address, one] });
        }
      }
      return { asset, wallet, vault: inVault, exit: { amount: pending.amount, unlock_at: unlockAt, market: pending.market }, unbacked, buyBackRate };
    }),
  );
}

export const portfolioPage: Page = (root, app) => {
  root.append(h("h1", {}, "Portfolio"));
  const gate = walletGate(app.wallet, app.ctx);
  if (gate) {
    root.append(gate);
    return;
  }
  const status = h("div#portfolio-status.notice", { role: "status" });
  const table = h("table#balances", {}, h("tbody", {}, h("tr", {}, h("td", {}, "Loading balances…"))));
  const faucet = h("div");
  root.append(status, table, faucet);
  const timers: number[] = [];
  const reload = (): void => {
    timers.forEach((t) => clearInterval(t));
    timers.length = 0;
    void draw(app, table, faucet, status, timers, reload).catch((err) =>
      notice(status, "error", `Cannot read balances: ${err.message}`),
    );
  };
  reload();
  return () => timers.forEach((t) => clearInterval(t));
};

async function draw(
  app: App,
  table: HTMLTableElement,
  faucet: HTMLElement,
  status: HTMLElement,
  timers: number[],
  reload: () => void,
): Promise<void> {
  const { ctx, wallet } = app;
  const account = wallet.account!;
  const client = wallet.client!;
  const vault = ctx.config.contracts.CreditsVault;
  const [rows, now, prices] = await Promise.all([readRows(ctx, account), chainNow(ctx), loadPrices(ctx)]);
  // The chain's clock may run ahead of ours (a dev chain that skipped time); count down in chain time.
  const offset = Math.max(0, now - Date.now() / 1000);
  const tx = (label: string, write: Parameters<typeof send>[5]) => send(ctx, client, account, status, label, write);

  async function deposit(asset: AssetInfo, input: HTMLInputElement, walletBalance: bigint): Promise<void> {
    let amount: bigint;
    try {
      amount = parseAmount(input.value, asset.decimals, asset.symbol);
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    if (amount > walletBalance) {
      return notice(
        status,
        "error",
        `Insufficient balance: your wallet holds ${money(walletBalance, asset.symbol, { rounding: "down" })}; you asked to deposit ${money(amount, asset.symbol, { rounding: "up" })}. Nothing was sent.`,
      );
    }
    const allowance = await ctx.client.readContract({
      address: asset.address,
      abi: erc20Abi,
      functionName: "allowance",
      args: [account, vault],
    });
    if (allowance < amount) {
      const ok = await tx(`Approve ${asset.symbol}`, { address: asset.address, abi: erc20Abi, functionName: "approve", args: [vault, amount] });
      if (!ok) return;
    }
    if (await tx(`Deposit ${money(amount, asset.symbol)}`, { address: vault, abi: vaultAbi, functionName: "deposit", args: [asset.address, amount] }))
      reload();
  }

  async function requestExit(asset: AssetInfo, input: HTMLInputElement): Promise<void> {
    let amount: bigint;
    try {
      amount = parseAmount(input.value, asset.decimals, asset.symbol);
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    const label = asset.kind === "usdc" ? "Request withdrawal" : "Request a sale from the vault";
    if (await tx(`${label} of ${money(amount, asset.symbol)}`, { address: vault, abi: vaultAbi, functionName: "request_exit", args: [asset.address, amount] }))
      reload();
  }

  /** The buy-back: sell unbacked tokens from the wallet to the provider's insurance fund,
   *  refused here (nothing sent) beyond what is unbacked or held. */
  async function buyBack(row: Row, input: HTMLInputElement): Promise<void> {
    const { asset } = row;
    const escrow = ctx.config.contracts.CreditEscrow;
    let amount: bigint;
    try {
      amount = parseAmount(input.value, asset.decimals, asset.symbol);
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    if (amount > row.unbacked || amount > row.wallet) {
      const most = row.unbacked < row.wallet ? row.unbacked : row.wallet;
      return notice(status, "error", `The fund buys back at most ${money(most, asset.symbol, { rounding: "down" })} of yours (what is unbacked and in your wallet). Nothing was sent.`);
    }
    const quote = await ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "quote_buy_back", args: [asset.address, amount] });
    const allowance = await ctx.client.readContract({ address: asset.address, abi: erc20Abi, functionName: "allowance", args: [account, escrow] });
    if (allowance < amount) {
      const ok = await tx(`Approve ${asset.symbol} to the escrow`, { address: asset.address, abi: erc20Abi, functionName: "approve", args: [escrow, amount] });
      if (!ok) return;
    }
    if (await tx(`Sell ${money(amount, asset.symbol)} to the insurance fund for ${money(quote, "USDC")}`, { address: escrow, abi: escrowAbi, functionName: "buy_back_unbacked", args: [asset.address, amount] }))
      reload();
  }

  // Instant exit (no thaw): the wallet signs an ExitRequest; the coordinator's door co-signs a
  // release if the amount is free of unsettled usage (locked for it until used or expired);
  // the wallet then sends the release to the vault.
  async function instantExit(asset: AssetInfo, input: HTMLInputElement): Promise<void> {
    let amount: bigint;
    try {
      amount = parseAmount(input.value, asset.decimals, asset.symbol);
    } catch (err) {
      return notice(status, "error", (err as Error).message);
    }
    let release;
    try {
      const { nonce } = await api.exitNonce(account);
      const terms = { account, asset: asset.address, amount, nonce: BigInt(nonce), expiry: BigInt(await chainNow(ctx)) + EXIT_REQUEST_SECONDS };
      notice(status, "pending", `Sign in your wallet: a request to leave the vault with ${money(amount, asset.symbol)} at once (no transaction, no gas).`);
      const signature = await client.signTypedData({ account, ...exitRequestTypedData(ctx.chain.id, vault, terms) });
      ({ release } = await api.requestExit(exitRequestBody(terms, signature)));
    } catch (err) {
      // The door's refusal says why in whole units ("only 12.50 USDC is free of unsettled usage …").
      return notice(status, "error", isRejection(err) ? explain(err) : `Instant exit refused: ${(err as Error).message}`);
    }
    const args = [asset.address, BigInt(release.amount), 0n, BigInt(release.nonce), BigInt(release.expiry), release.signature] as const;
    if (await tx(`Instant exit of ${money(BigInt(release.amount), asset.symbol)}`, { address: vault, abi: vaultAbi, functionName: "exit_instant", args }))
      reload();
  }

  const body = h("tbody");
  const buyBacks = h("div#buybacks");
  for (const row of rows) {
    const { asset } = row;
    const input = h("input", { "data-amount": asset.symbol, inputmode: "decimal", placeholder: "amount", size: 10 });
    const actions = h("td.actions", {}, input, " ", h("button", { "data-action": "deposit", "data-asset": asset.symbol, onclick: () => void deposit(asset, input, row.wallet) }, "Deposit"));
    if (asset.kind === "usdc") {
      actions.append(" ", h("button", { "data-action": "request-exit", "data-asset": asset.symbol, onclick: () => void requestExit(asset, input) }, "Request withdrawal"));
      actions.append(" ", h("button.secondary", { "data-action": "instant-exit", "data-asset": asset.symbol, onclick: () => void instantExit(asset, input) }, "Instant exit"));
    } else {
      actions.append(
        " ",
        h("button.secondary", { "data-action": "request-exit", "data-asset": asset.symbol, title: "A trustless exit: after the thaw, sold for USDC through the exit market fixed now", onclick: () => void requestExit(asset, input) }, "Sell from the vault"),
        " ",
        h("span.useorsell", { "data-asset": asset.symbol }, h("a", { href: "#/utilize" }, "Use"), " or ", h("a", { href: `#/market?from=${asset.symbol}` }, "swap")),
      );
    }
    if (row.unbacked > 0n) {
      // The fund pays every unbacked token the same fixed rate: its token's bond share of face value.
      const rate = row.buyBackRate;
      const sellInput = h("input", { "data-buyback-amount": asset.symbol, inputmode: "decimal", placeholder: "amount", size: 8 });
      buyBacks.append(
        h(
          "div.notice.buyback",
          { "data-buyback": asset.symbol, "data-state": "info", "data-unbacked-units": row.unbacked.toString(), "data-rate-units": rate.toString() },
          `${balance(row.unbacked, asset.symbol)} of ${asset.provider ?? asset.symbol} is unbacked (its lot slashed, expired or closed short): its insurance fund buys it back at `,
          h("strong", { "data-buyback-rate": asset.symbol }, `${usdText(rate)} per ${asset.symbol}`),
          ` and burns it. You hold ${balance(row.wallet, asset.symbol)} in your wallet. `,
          sellInput,
          " ",
          h("button.secondary", { "data-action": "buy-back", "data-asset": asset.symbol, onclick: () => void buyBack(row, sellInput) }, "Sell to the fund"),
        ),
      );
    }
    const exitCell = h("td.exit", { "data-exit": asset.symbol });
    if (row.exit.amount > 0n) {
      const countdown = h("span.countdown", { "data-countdown": asset.symbol });
      const selling = asset.kind !== "usdc";
      const quote = selling ? await exitQuote(ctx, row) : null;
      const complete = h(
        "button",
        { "data-action": "complete-exit", "data-asset": asset.symbol, disabled: true, onclick: async () => {
          // A provider token is sold through the exit market fixed at request, for at least the minimum shown.
          const label = selling ? `Sell ${money(quote!.selling, asset.symbol)} for at least ${money(quote!.minOut, "USDC")}` : `Complete withdrawal of ${asset.symbol}`;
          if (await tx(label, { address: vault, abi: vaultAbi, functionName: "complete_exit", args: [asset.address, quote?.minOut ?? 0n, selling] })) reload();
        } },
        selling ? "Sell for USDC" : "Complete withdrawal",
      );
      // No quote (no exit market fixed at request, or not one this page can quote): no sale
      // from here; the token itself can always leave.
      const unquoted = selling && quote === null;
      const cancel = h("button.secondary", { "data-action": "cancel-exit", onclick: async () => {
        if (await tx(`Cancel withdrawal of ${asset.symbol}`, { address: vault, abi: vaultAbi, functionName: "cancel_exit", args: [asset.address] })) reload();
      } }, "Cancel");
      // The trustless exit's fallback: a provider token the exit market cannot sell leaves as the token itself.
      const take = asset.kind === "usdc" ? null : h(
        "button.secondary",
        { "data-action": "take-exit", "data-asset": asset.symbol, disabled: true, onclick: async () => {
          if (await tx(`Take ${asset.symbol} to your wallet`, { address: vault, abi: vaultAbi, functionName: "complete_exit", args: [asset.address, 0n, false] })) reload();
        } },
        "Take the token",
      );
      const tick = () => {
        const left = Number(row.exit.unlock_at) - (Date.now() / 1000 + offset);
        countdown.textContent = left > 0 ? `thawing: ${duration(left)} left` : "thawed: ready to complete";
        complete.disabled = left > 0 || unquoted;
        if (take) take.disabled = left > 0;
      };
      tick();
      timers.push(window.setInterval(tick, 1000));
      exitCell.append(`${prices.balance(row.exit.amount, asset.symbol)} `, countdown, " ");
      if (quote !== null) {
        exitCell.append(
          h(
            "div.exit-quote",
            { "data-exit-quote": asset.symbol, "data-quote-units": quote.quote.toString(), "data-min-out-units": quote.minOut.toString() },
            `Sells ${prices.money(quote.selling, asset.symbol)} through the exit market fixed at request: quote `,
            h("strong", {}, `${money(quote.quote, "USDC")} (${usdText(quote.quote)})`),
            `, at least ${money(quote.minOut, "USDC")} (${usdText(quote.minOut)}) with ${Number(EXIT_SLIPPAGE_BPS) / 100} % slippage, credited in the vault. `,
          ),
        );
      } else if (unquoted) {
        const why = row.exit.market === ZERO_ADDRESS ? "no exit market was set when it was requested" : "its exit market cannot be quoted here";
        exitCell.append(h("div.exit-quote.muted", { "data-exit-quote": asset.symbol }, `No sale from this page: ${why}. Take the token instead. `));
      }
      exitCell.append(complete, " ", ...(take ? [take, " "] : []), cancel);
    } else {
      exitCell.append("—");
    }
    body.append(
      h(
        "tr",
        { "data-asset": asset.symbol },
        h("th", {}, asset.symbol, asset.provider ? h("small", {}, ` ${asset.provider}`) : null),
        h("td.num", { "data-balance": "wallet", "data-units": row.wallet.toString() }, prices.balance(row.wallet, asset.symbol, { symbol: false })),
        h("td.num", { "data-balance": "vault", "data-units": row.vault.toString() }, prices.balance(row.vault, asset.symbol, { symbol: false })),
        exitCell,
        actions,
      ),
    );
  }
  // Everything the wallet holds, in the vault or on its way out, in dollars (tokens at the TWAP).
  const total = prices.total(rows.flatMap((r) => [r.wallet, r.vault, r.exit.amount].map((amount) => ({ amount, symbol: r.asset.symbol }))));
  table.replaceChildren(
    h("thead", {}, h("tr", {}, h("th", {}, "Asset"), h("th", {}, "Wallet"), h("th", {}, "Vault"), h("th", {}, "Pending withdrawal"), h("th", {}, ""))),
    body,
  );
  // Outside the table, so a phone shows it whole while the table scrolls in its box.
  const totalLine = h("p.total", {}, "Total: ", h("strong#portfolio-total", { "data-usd-micro": total.usd.toString() }, total.text));
  faucet.replaceChildren(totalLine, buyBacks);
  if (ctx.chain.id === 31337) {
    const usdc = ctx.usdc;
    faucet.append(
      h(
        "p.faucet",
        {},
        "Local chain: ",
        h("button.secondary#faucet", { onclick: async () => {
          if (await tx("Mint 1,000 test USDC", { address: usdc.address, abi: mockUsdcAbi, functionName: "mint", args: [account, 1_000n * 10n ** 6n] })) reload();
        } }, "Get 1,000 test USDC"),
        " Provider tokens are spend/sell-only in the vault: use them through the gateway, or sell them for USDC.",
      ),
    );
  }
}
