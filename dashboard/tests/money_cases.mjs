// Runs the front end's formatter (dashboard/src/money.ts, bundled by esbuild to MONEY_MODULE)
// on the cases tests/dashboard/test_money.py writes to stdin (JSON, big integers as strings)
// and prints one JSON array of answers: the Python formatter's cases, answered in TypeScript.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const m = await import(pathToFileURL(process.env.MONEY_MODULE).href);
const big = (v) => (v === null || v === undefined ? null : BigInt(v));
const cases = JSON.parse(readFileSync(0, "utf8"));
const answers = cases.map((c) => {
  try {
    switch (c.fn) {
      case "amount_text":
        return m.amountText(BigInt(c.amount), c.decimals, c.places, c.rounding);
      case "usd_text":
        return m.usdText(BigInt(c.amount), c.rounding);
      case "display_decimals":
        return m.displayDecimals(c.symbol, big(c.face));
      case "money":
        return m.money(BigInt(c.amount), c.symbol, { twap: big(c.twap), unlimited: big(c.unlimited), rounding: c.rounding, face: big(c.face) });
      case "parse":
        return m.parseAmount(c.text, c.decimals, "X", true).toString();
      default:
        return `unknown fn ${c.fn}`;
    }
  } catch (err) {
    return `error: ${err.message}`;
  }
});
console.log(JSON.stringify(answers));
