// Portfolio / vault: wallet and vault balances, deposit, trustless withdrawal with its
// thaw countdown; provider tokens are spend/sell-only, so they show "use or sell".
import type { Address } from "viem";
import { erc20Abi, mockUsdcAbi, vaultAbi } from "../abi";
import type { AssetInfo } from "../api";
import { send, type Ctx } from "../chain";
import { duration, parseAmount } from "../format";
import { money } from "../money";
import { loadPrices } from "../prices";
import type { App, Page } from "../main";
import { h, notice } from "../ui";
import { walletGate } from "../wallet";

interface Row {
  asset: AssetInfo;
  wallet: bigint;
  vault: bigint;
  exit: { amount: bigint; unlock_at: bigint };
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
      return { asset, wallet, vault: inVault, exit: { amount: pending.amount, unlock_at: unlockAt } };
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
    if (await tx(`Request withdrawal of ${money(amount, asset.symbol)}`, { address: vault, abi: vaultAbi, functionName: "request_exit", args: [asset.address, amount] }))
      reload();
  }

  const body = h("tbody");
  for (const row of rows) {
    const { asset } = row;
    const input = h("input", { "data-amount": asset.symbol, inputmode: "decimal", placeholder: "amount", size: 10 });
    const actions = h("td.actions", {}, input, " ", h("button", { "data-action": "deposit", "data-asset": asset.symbol, onclick: () => void deposit(asset, input, row.wallet) }, "Deposit"));
    if (asset.kind === "usdc") {
      actions.append(" ", h("button", { "data-action": "request-exit", "data-asset": asset.symbol, onclick: () => void requestExit(asset, input) }, "Request withdrawal"));
    } else {
      actions.append(
        " ",
        h("span.useorsell", { "data-asset": asset.symbol }, h("a", { href: "#/utilize" }, "Use"), " or ", h("a", { href: `#/market?from=${asset.symbol}` }, "sell")),
      );
    }
    const exitCell = h("td.exit", { "data-exit": asset.symbol });
    if (row.exit.amount > 0n) {
      const countdown = h("span.countdown", { "data-countdown": asset.symbol });
      const complete = h(
        "button",
        { "data-action": "complete-exit", "data-asset": asset.symbol, disabled: true, onclick: async () => {
          // A provider token is sold through the exit market fixed at request.
          if (await tx(`Complete withdrawal of ${asset.symbol}`, { address: vault, abi: vaultAbi, functionName: "complete_exit", args: [asset.address, 0n, asset.kind !== "usdc"] })) reload();
        } },
        "Complete withdrawal",
      );
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
        complete.disabled = left > 0;
        if (take) take.disabled = left > 0;
      };
      tick();
      timers.push(window.setInterval(tick, 1000));
      exitCell.append(`${prices.money(row.exit.amount, asset.symbol)} `, countdown, " ", complete, " ", ...(take ? [take, " "] : []), cancel);
    } else {
      exitCell.append("—");
    }
    body.append(
      h(
        "tr",
        { "data-asset": asset.symbol },
        h("th", {}, asset.symbol, asset.provider ? h("small", {}, ` ${asset.provider}`) : null),
        h("td.num", { "data-balance": "wallet", "data-units": row.wallet.toString() }, prices.money(row.wallet, asset.symbol, { symbol: false })),
        h("td.num", { "data-balance": "vault", "data-units": row.vault.toString() }, prices.money(row.vault, asset.symbol, { symbol: false })),
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
  faucet.replaceChildren(totalLine);
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
