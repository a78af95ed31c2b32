// Usage and settlement: the key's usage records with their dates (UTC), what it spent per
// model and per day, a CSV export of every record, every settlement epoch with its
// transaction, and "verify": the record's Merkle proof checked in this browser against
// the root the CreditsVault holds on chain (the server's root is not trusted).
import { vaultAbi } from "../abi";
import { api, apiKey, type Epoch, type UsageRecord, type UsageTotals } from "../api";
import { short } from "../format";
import type { App, Page } from "../main";
import { leafHash, verify } from "../merkle";
import { loadPrices, type Prices } from "../prices";
import { h, notice } from "../ui";

export const usagePage: Page = (root, app) => {
  const records = h("div#records");
  const totals = h("div#usage-totals");
  const epochs = h("div#epochs");
  const csvStatus = h("div#csv-status.notice", { role: "status" });
  const refresh = h("button.secondary#refresh-usage", { onclick: () => load() }, "Refresh");
  const csv = h("button.secondary#usage-csv", { onclick: () => void download(csvStatus) }, "Export CSV");
  root.append(
    h("h1", {}, "Usage and settlement"),
    h("h2", {}, "What you spent"),
    totals,
    h("h2", {}, "Your usage records ", refresh, " ", csv),
    csvStatus,
    records,
    h("h2", {}, "Settlement epochs"),
    epochs,
  );
  // Only the newest load draws: a refresh clicked while an older one is still in flight
  // must not have the older answer drawn over it (nor over a verify result shown since).
  // `data-loading` on the records is set while a load is in flight.
  let generation = 0;
  const load = () => {
    const mine = ++generation;
    records.dataset.loading = "1";
    void loadPrices(app.ctx)
      .then(async (prices) => {
        if (mine !== generation) return;
        void drawTotals(totals, prices);
        void drawEpochs(epochs, prices);
        await drawRecords(records, app, prices, () => mine === generation);
      })
      .finally(() => {
        if (mine === generation) delete records.dataset.loading;
      });
  };
  load();
};

/** A time in seconds as "2026-12-05 18:41 UTC". */
export function utc(seconds: number): string {
  return `${new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

async function download(status: HTMLElement): Promise<void> {
  if (!apiKey()) return notice(status, "error", "Use an API key (Utilize page) to export its usage.");
  try {
    const { text, filename } = await api.usageCsv();
    const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    notice(status, "ok", `Exported ${Math.max(0, text.trim().split("\n").length - 1)} records to ${filename}.`);
  } catch (err) {
    notice(status, "error", `Could not export: ${(err as Error).message}`);
  }
}

/** Per model and per day (UTC), with each asset's amount and its dollars (provider tokens at the TWAP). */
async function drawTotals(box: HTMLElement, prices: Prices): Promise<void> {
  if (!apiKey()) return notice(box, "info", "Use an API key (Utilize page) to see what it spent.");
  let totals: UsageTotals;
  try {
    totals = await api.usageTotals();
  } catch (err) {
    return notice(box, "error", (err as Error).message);
  }
  box.className = "";
  if (!totals.per_model.length) return notice(box, "info", "Nothing spent yet.");
  const overall = prices.total(totals.per_model.map((m) => ({ amount: BigInt(m.cost), symbol: m.asset })));
  box.replaceChildren(
    h("p", {}, "In all: ", h("strong#usage-total", { "data-usd-micro": overall.usd.toString() }, overall.text), totals.complete ? "" : h("small", {}, ` (the newest ${totals.records} records)`), h("small.muted", {}, " · refunded requests are not counted")),
    h(
      "table#usage-per-model.model-totals",
      {},
      h("thead", {}, h("tr", {}, ...["Model", "Requests", "Tokens", "Cost"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...totals.per_model.map((m) =>
          h(
            "tr",
            { "data-model-total": `${m.model}:${m.asset}` },
            h("td", {}, m.model),
            h("td.num", {}, m.requests.toLocaleString("en-US")),
            h("td.num", {}, m.tokens.toLocaleString("en-US")),
            h("td.num", { "data-units": m.cost }, prices.money(m.cost, m.asset)),
          ),
        ),
      ),
    ),
    h(
      "table#usage-per-day.day-totals",
      {},
      h("thead", {}, h("tr", {}, ...["Day (UTC)", "Requests", "Cost"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...totals.per_day.map((d) =>
          h(
            "tr",
            { "data-day-total": `${d.day}:${d.asset}` },
            h("td", {}, d.day),
            h("td.num", {}, d.requests.toLocaleString("en-US")),
            h("td.num", { "data-units": d.cost }, prices.money(d.cost, d.asset)),
          ),
        ),
      ),
    ),
  );
}

/** "capped", or "signed: session 3, lane 1, ceiling 0.50 USDC" (the voucher that covers it). */
function modeText(r: UsageRecord, prices: Prices): string {
  if (r.mode !== "signed" || !r.voucher) return r.mode ?? "capped";
  return `signed: session ${r.voucher.session}, lane ${r.voucher.lane}, ceiling ${prices.plain(r.voucher.ceiling, r.asset)}`;
}

async function drawRecords(box: HTMLElement, app: App, prices: Prices, current: () => boolean): Promise<void> {
  if (!apiKey()) return notice(box, "info", "Use an API key (Utilize page) to see its usage records.");
  let list: UsageRecord[];
  try {
    list = await api.usage();
  } catch (err) {
    if (current()) notice(box, "error", (err as Error).message);
    return;
  }
  if (!current()) return; // a newer load draws instead
  box.className = "";
  if (!list.length) return notice(box, "info", "No usage yet: run a prompt on the Utilize page.");
  box.replaceChildren(
    h(
      "table#usage-table",
      {},
      h("thead", {}, h("tr", {}, ...["Time (UTC)", "Request", "Model", "Tokens in/out", "Cost", "Mode", "Settlement", "Transaction", ""].map((t) => h("th", {}, t)))),
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
            h("td", { "data-time": r.request_id }, utc(r.settled_at).replace(" UTC", "")),
            h("td", {}, h("code", {}, short(r.request_id, 8, 4))),
            h("td", {}, r.model),
            h("td.num", {}, `${r.input_tokens.toLocaleString("en-US")} / ${r.output_tokens.toLocaleString("en-US")}`),
            h("td.num", { "data-cost": r.request_id, "data-units": r.cost }, prices.money(r.cost, r.asset)),
            h("td", { "data-mode": r.request_id }, modeText(r, prices)),
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
      h("thead", {}, h("tr", {}, ...["Posted (UTC)", "Asset", "Epoch", "Status", "Records", "Total", "Usage root", "Transaction"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...list.map((e) =>
          h(
            "tr",
            { "data-epoch": `${e.asset}:${e.epoch}` },
            h("td", {}, utc(e.created_at).replace(" UTC", "")),
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
