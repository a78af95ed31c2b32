// Runs the front end's signed-mode messages (dashboard/src/signed.ts, bundled with viem by
// esbuild to SIGNED_MODULE) on the cases tests/dashboard/test_signed.py writes to stdin and
// prints their digests, signatures and headers as one JSON array.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const m = await import(pathToFileURL(process.env.SIGNED_MODULE).href);
const cases = JSON.parse(readFileSync(0, "utf8"));
const big = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === "string" && /^\d+$/.test(v) ? BigInt(v) : v]));
const answers = [];
for (const c of cases) {
  if (c.kind === "next") {
    // The playground's next voucher from a lanes report (GET /v1/promptex/lanes).
    try {
      answers.push({ header: await m.voucherFor(c.tab, c.report, BigInt(c.hold)) });
    } catch (err) {
      answers.push({ error: err.message });
    }
    continue;
  }
  const terms = big(c.terms);
  if (c.kind === "session") {
    answers.push({ digest: m.sessionKeyDigest(c.chain_id, c.vault, terms) });
  } else {
    const key = m.sessionAccount(c.private_key);
    const sig = await m.signVoucher(key, c.chain_id, c.vault, terms);
    answers.push({ digest: m.voucherDigest(c.chain_id, c.vault, terms), sig, header: m.voucherHeader(terms, sig), key: key.address });
  }
}
console.log(JSON.stringify(answers));
