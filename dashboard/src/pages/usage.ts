// Usage and settlement: the key's usage records, every settlement epoch with its
// transaction, and "verify": the record's Merkle proof checked in this browser against
// the root the CreditsVault holds on chain (the server's root is not trusted).
import { vaultAbi } from "../abi";
import { api, apiKey, type Epoch, type UsageRecord } from "../api";
import { short } from "../format";
import type { App, Page } from "../main";
import { leafHash, verify } from "../merkle";
import { loadPrices, type Prices } from "../prices";
import { h, notice } from "../ui";

export const usagePage: Page = (root, app) => {
  const records = h("div#records");
  const epochs = h("div#epochs");
  const refresh = h("button.secondary#refresh-usage", { onclick: () => load() }, "Refresh");
  root.append(h("h1", {}, "Usage and settlement"), h("h2", {}, "Your usage records ", refresh), records, h("h2", {}, "Settlement epochs"), epochs);
  const load = () =>
    void loadPrices(app.ctx).then((prices) => {
      void drawRecords(records, app, prices);
      void drawEpochs(epochs, prices);
    });
  load();
};

async function drawRecords(box: HTMLElement, app: App, prices: Prices): Promise<void> {
  if (!apiKey()) return notice(box, "info", "Use an API key (Utilize page) to see its usage records.");
  let list: UsageRecord[];
  try {
    list = await api.usage();
  } catch (err) {
    return notice(box, "error", (err as Error).message);
  }
  box.className = "";
  if (!list.length) return notice(box, "info", "No usage yet: run a prompt on the Utilize page.");
  box.replaceChildren(
    h(
      "table#usage-table",
      {},
      h("thead", {}, h("tr", {}, ...["Request", "Model", "Tokens in/out", "Cost", "Settlement", "Transaction", ""].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...list.map((r) => {
          const result = h("div.verify-result", { "data-verify": r.request_id });
          const settled = r.batch_status === "confirmed";
          const button = h("button", { "data-action": "verify", "data-request": r.request_id, disabled: !settled, onclick: () => void check(app, r, result) }, "Verify");
          return h(
            "tr",
            { "data-request": r.request_id },
            h("td", {}, h("code", {}, short(r.request_id, 8, 4))),
            h("td", {}, r.model),
            h("td.num", {}, `${r.input_tokens} / ${r.output_tokens}`),
            h("td.num", { "data-cost": r.request_id, "data-units": r.cost }, prices.money(r.cost, r.asset)),
            h("td", { "data-settlement": r.request_id, "data-status": r.status }, r.settlement),
            h("td", {}, r.tx_hash ? h("code", { title: r.tx_hash }, short(r.tx_hash, 8, 6)) : "—"),
            h("td", {}, button, result),
          );
        }),
      ),
    ),
  );
}

async function check(app: App, r: UsageRecord, out: HTMLElement): Promise<void> {
  notice(out, "pending", "Checking the proof against the chain…");
  try {
    const p = await api.proof(r.request_id);
    const leaf = leafHash(p.record, p.leaf_version ?? 1);
    if (leaf.toLowerCase() !== p.leaf.toLowerCase()) {
      return notice(out, "error", "✗ The record's fields do not hash to the leaf the server sent.");
    }
    const asset = app.ctx.asset(p.asset);
    const onChain = await app.ctx.client.readContract({
      address: app.ctx.config.contracts.CreditsVault,
      abi: vaultAbi,
      functionName: "usage_roots",
      args: [asset.address, BigInt(p.epoch)],
    });
    if (verify(p.proof, onChain, leaf)) {
      notice(out, "ok", `✓ Verified: in ${p.asset} epoch ${p.epoch}'s root `, h("code", { title: onChain }, short(onChain, 10, 6)), " on chain");
    } else {
      notice(out, "error", `✗ Does not prove into the root on chain for ${p.asset} epoch ${p.epoch} (${short(onChain)}).`);
    }
  } catch (err) {
    notice(out, "error", (err as Error).message);
  }
}

async function drawEpochs(box: HTMLElement, prices: Prices): Promise<void> {
  let list: Epoch[];
  try {
    list = await api.epochs();
  } catch (err) {
    return notice(box, "error", (err as Error).message);
  }
  box.className = "";
  if (!list.length) return notice(box, "info", "No epoch has been settled yet.");
  box.replaceChildren(
    h(
      "table#epoch-table",
      {},
      h("thead", {}, h("tr", {}, ...["Asset", "Epoch", "Status", "Records", "Total", "Usage root", "Transaction"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...list.map((e) =>
          h(
            "tr",
            { "data-epoch": `${e.asset}:${e.epoch}` },
            h("td", {}, e.asset),
            h("td.num", {}, e.epoch),
            h("td", {}, e.status, e.error ? h("small", {}, ` ${e.error}`) : null),
            h("td.num", {}, e.records),
            h("td.num", { "data-units": e.total }, prices.money(e.total, e.asset)),
            h("td", {}, h("code", { title: e.usage_root }, short(e.usage_root, 10, 6))),
            h("td", {}, e.tx_hash ? h("code", { title: e.tx_hash }, short(e.tx_hash, 10, 6)) : "—"),
          ),
        ),
      ),
    ),
  );
}
