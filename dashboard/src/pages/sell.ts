// Sell capacity: the connected seller's lots in the CreditEscrow and USDC earnings to
// claim from the vault. Onboarding (key check, sealing) stays in the CLI for now.
import { escrowAbi, vaultAbi } from "../abi";
import { send } from "../chain";
import { fmt } from "../format";
import type { Page } from "../main";
import { h, notice } from "../ui";
import { walletGate } from "../wallet";

const STATUS = ["—", "open", "closed", "expired", "slashed"];
const MAX_LOTS = 200n;

export const sellPage: Page = (root, app) => {
  const { ctx, wallet } = app;
  root.append(
    h("h1", {}, "Sell capacity"),
    h(
      "p.notice.info",
      {},
      "Onboarding is not in the browser yet: a seller registers capacity with ",
      h("code", {}, "promptex seller add-capacity --provider … --face-value … --kind tokenized|listed --declare-resale-permitted"),
      " (the gateway checks the key and seals it; it never reaches a browser). Lots and earnings show here.",
    ),
  );
  const gate = walletGate(wallet, ctx);
  if (gate) return void root.append(gate);
  const account = wallet.account!;
  const earnings = h("div.card#earnings", {}, "Loading…");
  const lots = h("div#lots", {}, "Loading lots…");
  root.append(earnings, h("h2", {}, "Your lots"), lots);
  const symbolOf = new Map(ctx.assets.map((a) => [a.address.toLowerCase(), a]));

  const drawEarnings = async () => {
    const claimable = await ctx.client.readContract({ address: ctx.config.contracts.CreditsVault, abi: vaultAbi, functionName: "claimable", args: [account, ctx.usdc.address] });
    const status = h("div.notice#claim-status");
    earnings.replaceChildren(
      h("h2", {}, "Earnings"),
      h("p", {}, "USDC earned from listed lots, claimable from the vault: ", h("strong#claimable", {}, `${fmt(claimable, 6)} USDC`), " "),
      h("button#claim", { disabled: claimable === 0n, onclick: async () => {
        if (await send(ctx, wallet.client!, account, status, "Claim USDC", { address: ctx.config.contracts.CreditsVault, abi: vaultAbi, functionName: "claim", args: [ctx.usdc.address] })) void drawEarnings();
      } }, "Claim"),
      status,
    );
  };
  void drawEarnings().catch((err) => notice(earnings, "error", err.message));

  void (async () => {
    const escrow = ctx.config.contracts.CreditEscrow;
    const count = await ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "lot_count" });
    const first = count > MAX_LOTS ? count - MAX_LOTS + 1n : 1n;
    const ids = Array.from({ length: Number(count - first + 1n) }, (_, i) => first + BigInt(i));
    const all = await Promise.all(ids.map((id) => ctx.client.readContract({ address: escrow, abi: escrowAbi, functionName: "lots", args: [id] }).then((lot) => ({ id, lot }))));
    const mine = all.filter(({ lot }) => lot.seller.toLowerCase() === account.toLowerCase());
    if (!mine.length) return notice(lots, "info", "This wallet has no lots.");
    lots.replaceChildren(
      h(
        "table#lot-table",
        {},
        h("thead", {}, h("tr", {}, ...["Lot", "Token", "Kind", "Status", "Face value", "Remaining", "Bond (released)", "Expiry"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          ...mine.map(({ id, lot }) => {
            const token = symbolOf.get(lot.token.toLowerCase());
            const tokenized = lot.kind === 1; // KIND_TOKENIZED (2: listed)
            const remaining = lot.capacity - lot.consumed;
            return h(
              "tr",
              { "data-lot": String(id) },
              h("td", {}, String(id)),
              h("td", {}, token?.symbol ?? lot.token),
              h("td", {}, tokenized ? "tokenized" : `listed at ${lot.rate_bps / 100} % of list`),
              h("td", {}, STATUS[lot.status] ?? String(lot.status)),
              h("td.num", {}, `$${fmt(lot.face_value, 6, 2)}`),
              h("td.num", {}, tokenized ? `${fmt(remaining, 18, 2)} ${token?.symbol ?? ""}` : `$${fmt(remaining, 6, 2)}`),
              h("td.num", {}, `${fmt(lot.bond, 6, 2)} (${fmt(lot.bond_released, 6, 2)}) USDC`),
              h("td", {}, new Date(Number(lot.expiry) * 1000).toISOString().slice(0, 10)),
            );
          }),
        ),
      ),
    );
  })().catch((err) => notice(lots, "error", `Cannot read lots: ${err.message}`));
};
