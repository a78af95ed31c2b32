// Runs the playground's price (dashboard/src/hold.ts, bundled by esbuild to HOLD_MODULE) on
// the cases tests/dashboard/test_hold.py writes to stdin and prints one JSON array of answers.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const m = await import(pathToFileURL(process.env.HOLD_MODULE).href);
const cases = JSON.parse(readFileSync(0, "utf8"));
const answers = cases.map((c) => {
  const p = m.playgroundPrice(c.model, c.symbol, c.decimals, c.bytes, c.output);
  const cheapest = m.costAt(c.model, c.symbol, c.decimals, p.boundInputs, c.output);
  return { maxRate: p.maxRate, most: String(p.most), typical: String(p.typical), boundInputs: p.boundInputs, cheapest: String(cheapest), header: m.MAX_RATE_HEADER };
});
console.log(JSON.stringify(answers));
