// Runs the front end's ExitRequest (dashboard/src/exit.ts, bundled with viem by esbuild to
// EXIT_MODULE) on the cases tests/dashboard/test_exit_request.py writes to stdin and prints
// their digests and request bodies as one JSON array.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const m = await import(pathToFileURL(process.env.EXIT_MODULE).href);
const cases = JSON.parse(readFileSync(0, "utf8"));
const answers = cases.map((c) => {
  const terms = { ...c.terms, amount: BigInt(c.terms.amount), nonce: BigInt(c.terms.nonce), expiry: BigInt(c.terms.expiry) };
  return { digest: m.exitRequestDigest(c.chain_id, c.vault, terms), body: m.exitRequestBody(terms, "0x01") };
});
console.log(JSON.stringify(answers));
