// Drives the dashboard in Debian's headless Chromium (playwright-core, no browser download)
// with a test-only EIP-1193 wallet that forwards to anvil's unlocked accounts.
// Started by tests/dashboard/test_browser.py with the market running; prints one line
// `RESULT {json}` and exits 0, or prints the failure and exits 1.
//
// env: DASHBOARD_URL, ANVIL_URL, USER_ADDRESS, OTHER_ADDRESS, OWNER_ADDRESS (an org's wallet),
//      UPSTREAM_URL (the fake upstream, for seller onboarding), BILLING_ACCOUNT and
//      BILLING_CREDENTIAL (the user's account at the fake billing API, linked in the page),
//      CHROMIUM (default /usr/bin/chromium),
//      SCREENSHOTS (a folder; the pages' screenshots go there). playwright gives each launch a
//      fresh temporary user-data-dir (it refuses --user-data-dir in args), removed on close.
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { encodeFunctionData, maxUint256, parseAbi } from "viem";

const env = process.env;
const DASHBOARD = env.DASHBOARD_URL;
const ANVIL = env.ANVIL_URL;
const USER = env.USER_ADDRESS;
const OTHER = env.OTHER_ADDRESS;
const OWNER = env.OWNER_ADDRESS;
const UPSTREAM = env.UPSTREAM_URL; // the fake upstream a seller onboards capacity from
const SHOTS = env.SCREENSHOTS ?? mkdtempSync(join(tmpdir(), "promptex-shots-"));
const T = 30_000;
mkdirSync(SHOTS, { recursive: true });

const result = { steps: [] };
const started = Date.now();
result.texts = {}; // page name → its text, for the smallest-units scan (tests/human_units.py)
async function grab(name, from = page) {
  result.texts[name] = await from.innerText("body");
}
function step(name, extra = {}) {
  result.steps.push({ name, at_ms: Date.now() - started, ...extra });
  console.error(`  ✓ ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

async function rpc(method, params = []) {
  const response = await fetch(ANVIL, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  return response.json();
}

async function call(to, abi, functionName, args) {
  const data = encodeFunctionData({ abi: parseAbi(abi), functionName, args });
  const { result: out, error } = await rpc("eth_call", [{ to, data }, "latest"]);
  if (error) throw new Error(`eth_call ${functionName}: ${error.message}`);
  return BigInt(out);
}

async function callRaw(to, abi, functionName, args) {
  const data = encodeFunctionData({ abi: parseAbi(abi), functionName, args });
  const { result: out, error } = await rpc("eth_call", [{ to, data }, "latest"]);
  if (error) throw new Error(`eth_call ${functionName}: ${error.message}`);
  return out;
}

async function sendAs(from, to, abi, functionName, args) {
  const data = encodeFunctionData({ abi: parseAbi(abi), functionName, args });
  // The app's margin over anvil's exact estimate (src/chain.ts): a pool writes its price
  // accumulators only in the first block of a new timestamp, so an exact estimate made
  // in the same second as the last block runs out of gas once the clock ticks.
  const estimate = await rpc("eth_estimateGas", [{ from, to, data }]);
  if (estimate.error) throw new Error(`${functionName}: ${estimate.error.message}`);
  const gas = "0x" + ((BigInt(estimate.result) * 125n) / 100n).toString(16);
  const { result: hash, error } = await rpc("eth_sendTransaction", [{ from, to, data, gas }]);
  if (error) throw new Error(`${functionName}: ${error.message}`);
  for (let i = 0; i < 100; i++) {
    const { result: receipt } = await rpc("eth_getTransactionReceipt", [hash]);
    if (receipt) {
      if (receipt.status !== "0x1") throw new Error(`${functionName} reverted`);
      return receipt;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${functionName}: no receipt`);
}

const ERC20 = ["function balanceOf(address) view returns (uint256)", "function allowance(address,address) view returns (uint256)", "function approve(address,uint256) returns (bool)", "function mint(address,uint256)"];
const VAULT = ["function balance_of(address,address) view returns (uint256)", "function pending_exits(address,address) view returns (uint256,uint256)"];
const ROUTER = ["function swap_exact_in(uint256,uint256,address[],uint256[],address,uint256) returns (uint256)"];
const ESCROW = [
  "function grant(address,address) view returns (address,uint256,uint256,uint256)",
  "function linked_account(address,bytes32) view returns (bytes32)",
];
const POOL = ["function balanceOf(address) view returns (uint256)"];
const CREDIT_ESCROW = ["function lot_count() view returns (uint256)"];
const PERP = ["function position_count() view returns (uint256)", "function shares_of(address) view returns (uint256)"];
const OPTIONS = ["function balanceOf(address,uint256) view returns (uint256)"];

// The test wallet, injected before any page script. It starts on the wrong chain (1).
function testWallet({ account, chainId }) {
  const listeners = {};
  // Like a real wallet, it remembers the authorization and the network across reloads.
  const saved = JSON.parse(sessionStorage.getItem("__testWallet") ?? "null");
  const state = { chainId: saved?.chainId ?? chainId, accounts: saved?.accounts ?? [], rejectNext: false, requests: [] };
  const save = () => sessionStorage.setItem("__testWallet", JSON.stringify({ chainId: state.chainId, accounts: state.accounts }));
  const emit = (event, value) => (listeners[event] ?? []).forEach((fn) => fn(value));
  const rejection = () => Object.assign(new Error("User rejected the request."), { code: 4001 });
  window.__wallet = state;
  window.ethereum = {
    isPromptexTestWallet: true,
    on(event, fn) { (listeners[event] ??= []).push(fn); },
    removeListener(event, fn) { listeners[event] = (listeners[event] ?? []).filter((f) => f !== fn); },
    async request({ method, params = [] }) {
      state.requests.push(method);
      switch (method) {
        case "eth_requestAccounts":
          if (state.rejectNext) { state.rejectNext = false; throw rejection(); }
          state.accounts = [account];
          save();
          emit("accountsChanged", state.accounts);
          return state.accounts;
        case "eth_accounts":
          return state.accounts;
        case "eth_chainId":
          return "0x" + state.chainId.toString(16);
        case "wallet_switchEthereumChain":
          state.chainId = parseInt(params[0].chainId, 16);
          save();
          emit("chainChanged", params[0].chainId);
          return null;
        case "eth_sendTransaction":
        case "eth_signTypedData_v4":
        case "personal_sign":
          if (state.rejectNext) { state.rejectNext = false; throw rejection(); }
      }
      const answer = await window.__anvil(method, params);
      if (answer.error) throw Object.assign(new Error(answer.error.message), answer.error);
      return answer.result;
    },
  };
}

const browser = await chromium.launch({
  executablePath: env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
try {
  // ─── No wallet ────────────────────────────────────────────────────────────
  const bare = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const barePage = await bare.newPage();
  await barePage.goto(`${DASHBOARD}/#/portfolio`);
  await barePage.waitForSelector("[data-wallet-gate=none]", { timeout: T });
  const noWallet = await barePage.innerText("[data-wallet-gate=none]");
  if (!/No wallet found/.test(noWallet)) throw new Error(`no-wallet message: ${noWallet}`);
  await barePage.screenshot({ path: join(SHOTS, "wallet-none.png") });
  await bare.close();
  step("no wallet: clear message");

  // ─── The test wallet, on the wrong network first ─────────────────────────
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.exposeFunction("__anvil", async (method, params) => rpc(method, params));
  await context.addInitScript(testWallet, { account: USER, chainId: 1 });
  page = await context.newPage();
  page.on("pageerror", (err) => console.error("page error:", err.message));
  const config = await (await fetch(`${DASHBOARD}/api/config`)).json();
  const usdc = config.assets.find((a) => a.symbol === "USDC").address;
  const cld = config.assets.find((a) => a.symbol === "CLD").address;
  const vault = config.contracts.CreditsVault;
  const walletUsdc = () => call(usdc, ERC20, "balanceOf", [USER]);
  const walletCld = () => call(cld, ERC20, "balanceOf", [USER]);
  const vaultUsdc = () => call(vault, VAULT, "balance_of", [USER, usdc]);
  const waitText = (selector, pattern, timeout = T) =>
    page.waitForFunction(
      ([s, p]) => new RegExp(p).test(document.querySelector(s)?.textContent ?? ""),
      [selector, pattern.source],
      { timeout, polling: 100 },
    );
  const status = (selector) => page.locator(selector).innerText();

  await page.goto(`${DASHBOARD}/#/portfolio`);
  await page.click("#connect");
  await page.waitForSelector("[data-wallet-gate=wrong-network]", { timeout: T });
  await waitText("[data-wallet-gate=wrong-network]", /Wrong network.*chain 1;.*chain 31337/);
  await page.screenshot({ path: join(SHOTS, "wallet-wrong-network.png") });
  await page.click("#switch-network");
  await page.waitForSelector("#account", { timeout: T });
  step("connect: wrong network shown, switched, connected");

  // ─── Portfolio: faucet, deposit, errors ──────────────────────────────────
  await page.click("#faucet");
  await waitText("tr[data-asset=USDC] [data-balance=wallet]", /^1,000\.00$/);
  const before = { wallet: await walletUsdc(), vault: await vaultUsdc() };

  await page.fill("input[data-amount=USDC]", "5000");
  await page.click("button[data-action=deposit][data-asset=USDC]");
  await waitText("#portfolio-status", /Insufficient balance/);
  const insufficient = await status("#portfolio-status");
  if ((await walletUsdc()) !== before.wallet || (await vaultUsdc()) !== before.vault) throw new Error("insufficient balance changed balances");
  step("insufficient balance: readable, nothing changed", { message: insufficient });

  await page.evaluate(() => {
    window.__states = [];
    const el = document.querySelector("#portfolio-status");
    new MutationObserver(() => window.__states.push(el.dataset.state)).observe(el, { attributes: true, childList: true });
  });
  await page.fill("input[data-amount=USDC]", "100");
  await page.click("button[data-action=deposit][data-asset=USDC]");
  await waitText("tr[data-asset=USDC] [data-balance=vault]", /^100\.00$/);
  const states = await page.evaluate(() => window.__states);
  if (!states.includes("pending") || !states.includes("ok")) throw new Error(`deposit states: ${states}`);
  if ((await vaultUsdc()) !== 100_000_000n) throw new Error("vault does not hold 100 USDC");
  step("deposit 100 USDC (pending → confirmed)");

  await page.evaluate(() => { window.__wallet.rejectNext = true; });
  await page.fill("input[data-amount=USDC]", "10");
  await page.click("button[data-action=deposit][data-asset=USDC]");
  await waitText("#portfolio-status", /You rejected the request/);
  const rejected = await status("#portfolio-status");
  if ((await vaultUsdc()) !== 100_000_000n || (await walletUsdc()) !== 900_000_000n) throw new Error("rejection changed balances");
  step("rejected signature: readable, nothing changed", { message: rejected });

  // ─── Market: quote, swap, multi-hop, slippage ────────────────────────────
  await page.goto(`${DASHBOARD}/#/market`);
  await page.waitForSelector("tr[data-pool=CLD]", { timeout: T });
  await page.fill("#swap-amount", "50");
  await waitText("#quote-route", /USDC → CLD/);
  await waitText("#quote-min", /CLD/);
  const impact = await status("#quote-impact");
  await page.screenshot({ path: join(SHOTS, "market.png"), fullPage: true });
  const cldBefore = await walletCld();
  await page.click("#swap-button");
  await waitText("#swap-status", /Swap .*confirmed in block/);
  const cldAfter = await walletCld();
  if (!(cldAfter > cldBefore)) throw new Error("the swap brought no CLD");
  step("swap 50 USDC → CLD", { impact, cld: String(cldAfter - cldBefore) });

  await page.selectOption("#swap-from", "CLD");
  await page.selectOption("#swap-to", "GPT");
  await page.fill("#swap-amount", "1000");
  await waitText("#quote-route", /CLD → USDC → GPT/);
  step("multi-hop quote CLD → USDC → GPT", { out: await status("#quote-out") });

  await page.selectOption("#swap-from", "USDC");
  await page.selectOption("#swap-to", "CLD");
  await page.fill("#swap-slippage", "0.1");
  await page.fill("#swap-amount", "20");
  await waitText("#quote-route", /USDC → CLD/);
  await waitText("#quote-min", /CLD/);
  // Someone else buys CLD before the user's swap lands: the price moves past 0.1 %.
  const router = config.contracts.Router;
  await sendAs(OTHER, usdc, ERC20, "mint", [OTHER, 100_000n * 10n ** 6n]);
  await sendAs(OTHER, usdc, ERC20, "approve", [router, maxUint256]);
  await sendAs(OTHER, router, ROUTER, "swap_exact_in", [5_000n * 10n ** 6n, 0n, [usdc, cld], [30n], OTHER, 2n ** 40n]);
  const held = { usdc: await walletUsdc(), cld: await walletCld() };
  await page.click("#swap-button");
  await waitText("#swap-status", /Slippage exceeded/);
  const slippage = await status("#swap-status");
  if ((await walletUsdc()) !== held.usdc || (await walletCld()) !== held.cld) throw new Error("a refused swap moved balances");
  step("slippage exceeded: readable, nothing swapped", { message: slippage });

  // ─── Market: add and remove liquidity through the Router ────────────────
  const cldPool = (await (await fetch(`${DASHBOARD}/api/pools`)).json()).find((p) => p.symbol === "CLD").address;
  const lpOf = () => call(cldPool, POOL, "balanceOf", [USER]);
  await page.waitForSelector("#add-liquidity", { timeout: T });
  await page.selectOption("#lp-pool", "CLD");
  const lpHeld = { cld: await walletCld(), usdc: await walletUsdc() };
  await page.fill("#lp-token-amount", "100000000");
  await page.click("#add-liquidity");
  await waitText("#lp-status", /Insufficient balance/);
  const lpInsufficient = await status("#lp-status");
  if ((await lpOf()) !== 0n || (await walletCld()) !== lpHeld.cld || (await walletUsdc()) !== lpHeld.usdc) throw new Error("a refused add moved balances");
  step("add liquidity beyond the balance: readable, nothing changed", { message: lpInsufficient });
  await page.fill("#lp-token-amount", "1000");
  await waitText("#lp-usdc-amount", /USDC/);
  await page.click("#add-liquidity");
  await waitText("#lp-status", /Add .*confirmed in block/);
  await page.waitForFunction(() => BigInt(document.querySelector("#lp-balance")?.dataset.lp ?? "0") > 0n, null, { timeout: T });
  const lpAfterAdd = await lpOf();
  if (!(lpAfterAdd > 0n) || (await walletCld()) !== lpHeld.cld - 1000n * 10n ** 18n) throw new Error("adding liquidity did not mint LP units for 1,000 CLD");
  await page.screenshot({ path: join(SHOTS, "market.png"), fullPage: true });
  step("add liquidity: 1,000 CLD + USDC at the pool's ratio", { lp: String(lpAfterAdd), worth: await status("#lp-worth") });
  await page.fill("#lp-remove-pct", "50");
  await page.click("#remove-liquidity");
  await waitText("#lp-status", /Remove 50 % .*confirmed in block/);
  const lpAfterRemove = await lpOf();
  if (lpAfterRemove !== lpAfterAdd - lpAfterAdd / 2n) throw new Error(`removing half left ${lpAfterRemove} of ${lpAfterAdd}`);
  if (!((await walletCld()) > lpHeld.cld - 1000n * 10n ** 18n)) throw new Error("removing liquidity returned no CLD");
  step("remove half the liquidity");

  // ─── Utilize: key by signature, spend cap, a streamed prompt and its cost ─
  await page.goto(`${DASHBOARD}/#/utilize`);
  await page.evaluate(() => { window.__wallet.rejectNext = true; });
  await page.click("#get-key");
  await waitText("#key-status", /You rejected the request/);
  step("rejected signature (key binding): readable");
  await page.click("#get-key");
  await page.waitForSelector("#new-key", { timeout: T });
  await page.waitForSelector("#model", { timeout: T });
  await page.selectOption("#model", "gpt-4o");
  await page.selectOption("#pay-with", "USDC");
  await waitText("#estimate-cost", /USDC/);
  const estimate = await status("#estimate-cost");
  await page.fill("#cap-total", "50");
  await page.click("#allow-spending");
  await waitText("#cap-status", /Spend cap recorded/, 60_000);
  await waitText("[data-spendable=USDC]", /^100\.00$/, 60_000);
  await page.click("#send-prompt");
  await waitText("#metered-cost", /\d.* USDC/, 60_000);
  const metered = await status("#metered-cost");
  result.metered_units = await page.locator("#metered-cost").getAttribute("data-units");
  const balanceAfter = await status("#balance-after");
  const requestId = await status("#request-id");
  const output = await status("#output");
  if (!output.trim()) throw new Error("no streamed text");
  await page.screenshot({ path: join(SHOTS, "utilize.png"), fullPage: true });
  await grab("utilize");
  step("prompt: estimate, stream, metered cost, balance after", { estimate, metered, balanceAfter, requestId });
  result.request_id = requestId;
  result.metered = metered;
  result.balance_after = balanceAfter;
  result.balance_after_units = await page.locator("#balance-after").getAttribute("data-units");

  // ─── Usage: the record settles on chain; verify its Merkle proof ─────────
  await page.goto(`${DASHBOARD}/#/usage`);
  const verifyButton = `button[data-action=verify][data-request="${requestId}"]`;
  await page.waitForSelector("#records:not([data-loading])", { timeout: T });
  await page.waitForSelector(verifyButton, { timeout: T });
  const deadline = Date.now() + 90_000;
  while (await page.locator(verifyButton).isDisabled()) {
    if (Date.now() > deadline) throw new Error(`record ${requestId} was not settled in time`);
    await page.waitForTimeout(1000);
    await page.click("#refresh-usage");
    await page.waitForSelector("#records:not([data-loading])", { timeout: T }); // this refresh drawn
    await page.waitForSelector(verifyButton, { timeout: T });
  }
  await page.click(verifyButton);
  await waitText(`[data-verify="${requestId}"]`, /Verified/);
  const verified = await status(`[data-verify="${requestId}"]`);
  await page.screenshot({ path: join(SHOTS, "usage.png"), fullPage: true });
  await grab("usage");
  step("verify usage proof against the root on chain", { verified });

  // The same page: the record's date, its model's and its day's totals, and the CSV export.
  await waitText(`[data-time="${requestId}"]`, /^\d{4}-\d\d-\d\d \d\d:\d\d$/);
  await waitText(`[data-mode="${requestId}"]`, /^capped$/); // under the spend cap, no voucher
  const modelTotal = await page.locator('[data-model-total="gpt-4o:USDC"] [data-units]').getAttribute("data-units");
  const dayTotals = await page.locator("[data-day-total] [data-units]").count();
  if (modelTotal !== result.metered_units || dayTotals !== 1) throw new Error(`usage totals: gpt-4o ${modelTotal} (metered ${result.metered_units}), ${dayTotals} days`);
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: T }), page.click("#usage-csv")]);
  result.usage_csv = readFileSync(await download.path(), "utf8");
  if (!result.usage_csv.includes(requestId)) throw new Error("the CSV export lacks the request");
  step("usage: date, totals per model and per day, CSV export", { file: download.suggestedFilename() });

  // ─── Withdrawal: too much refused; request; thaw; complete ───────────────
  await page.goto(`${DASHBOARD}/#/portfolio`);
  await waitText("tr[data-asset=USDC] [data-balance=vault]", /\d/);
  await page.fill("input[data-amount=USDC]", "5000");
  await page.click("button[data-action=request-exit][data-asset=USDC]");
  await waitText("#portfolio-status", /more than your balance in the vault/);
  const tooMuch = await status("#portfolio-status");
  const [pendingAmount] = await Promise.all([call(vault, VAULT, "pending_exits", [USER, usdc])]);
  if (pendingAmount !== 0n) throw new Error("a refused withdrawal left an exit pending");
  step("withdraw more than the vault balance: readable, nothing changed", { message: tooMuch });

  // A provider token sold from the vault: the trustless exit, through the exit market fixed at request.
  await page.fill("input[data-amount=CLD]", "10");
  await page.click("button[data-action=deposit][data-asset=CLD]");
  await waitText("tr[data-asset=CLD] [data-balance=vault]", /^10(\.0+)?$/);
  await page.fill("input[data-amount=CLD]", "10");
  await page.click("button[data-action=request-exit][data-asset=CLD]");
  await waitText("[data-exit-quote=CLD]", /quote [\d.,]+ USDC \(\$[\d.,]+\), at least [\d.,]+ USDC \(\$[\d.,]+\)/);
  step("sell CLD from the vault: requested, quote and minimum out in USDC and USD", { quote: await status("[data-exit-quote=CLD]") });

  await page.fill("input[data-amount=USDC]", "10");
  await page.click("button[data-action=request-exit][data-asset=USDC]");
  await waitText("[data-countdown=USDC]", /thawing: .* left/);
  const countdown = await status("[data-countdown=USDC]");
  await page.screenshot({ path: join(SHOTS, "portfolio.png"), fullPage: true });
  await grab("portfolio (withdrawing)");
  step("request withdrawal: thaw countdown", { countdown });

  await rpc("evm_increaseTime", [60]);
  await rpc("evm_mine", []);
  await page.reload();
  await waitText("[data-countdown=USDC]", /ready to complete/);
  const walletBeforeExit = await walletUsdc();
  await page.click("button[data-action=complete-exit][data-asset=USDC]");
  await waitText("#portfolio-status", /Complete withdrawal of USDC: confirmed/);
  if ((await walletUsdc()) - walletBeforeExit !== 10_000_000n) throw new Error("the withdrawal did not pay 10 USDC");
  step("complete withdrawal after the thaw");

  await waitText("[data-exit=USDC]", /^—$/); // redrawn after the withdrawal
  await waitText("[data-countdown=CLD]", /ready to complete/);
  const minOut = BigInt(await page.locator("[data-exit-quote=CLD]").getAttribute("data-min-out-units"));
  const vaultBeforeSale = await vaultUsdc();
  await page.click("button[data-action=complete-exit][data-asset=CLD]");
  await waitText("#portfolio-status", /Sell 10.* CLD for at least [\d.,]+ USDC: confirmed/);
  const proceeds = (await vaultUsdc()) - vaultBeforeSale;
  if (minOut === 0n || proceeds < minOut) throw new Error(`the sale from the vault paid ${proceeds}, minimum ${minOut}`);
  result.exit_sale = { proceeds: String(proceeds), min_out: String(minOut) };
  step("sold 10 CLD from the vault for USDC in the vault, at least the minimum shown", result.exit_sale);

  // The buy-back: the test slashed a GEM lot whose tokens this wallet holds.
  await waitText("[data-exit=CLD]", /^—$/); // redrawn after the sale (a form filled before would be replaced)
  await waitText("[data-buyback=GEM]", /insurance fund buys it back at \$[\d.,]+ per GEM/);
  await page.fill("input[data-buyback-amount=GEM]", "1000000");
  await page.click("button[data-action=buy-back][data-asset=GEM]");
  await waitText("#portfolio-status", /The fund buys back at most .* GEM of yours.*Nothing was sent/);
  step("buy-back beyond what is unbacked: readable, nothing sent", { message: await status("#portfolio-status") });
  await page.fill("input[data-buyback-amount=GEM]", "2");
  await page.click("button[data-action=buy-back][data-asset=GEM]");
  await waitText("#portfolio-status", /Sell 2.* GEM to the insurance fund for [\d.,]+ USDC: confirmed/);
  result.buy_back_rate = await page.locator("[data-buyback=GEM]").getAttribute("data-rate-units");
  step("buy-back: 2 unbacked GEM sold to the insurance fund at its rate in USD", { rate: await status("[data-buyback-rate=GEM]") });

  // Instant exit: the wallet signs a request, the coordinator's door co-signs a release of an
  // amount free of unsettled usage, the wallet sends it (no thaw). A fresh page: the form is
  // not redrawn under the typing.
  await page.reload();
  await waitText("tr[data-asset=USDC] [data-balance=vault]", /\d/);
  await page.fill("input[data-amount=USDC]", "1");
  const walletBeforeInstant = await walletUsdc();
  await page.click("button[data-action=instant-exit][data-asset=USDC]");
  await waitText("#portfolio-status", /Instant exit of 1\.00 USDC: confirmed/);
  if ((await walletUsdc()) - walletBeforeInstant !== 1_000_000n) throw new Error("the instant exit did not pay 1 USDC");
  step("instant exit: the wallet's request, the coordinator's release, sent");

  // ─── Redemption: link on chain, grant (rejected, then signed), rule, history, revoke ─
  const escrowAddress = config.contracts.RedemptionEscrow;
  await page.goto(`${DASHBOARD}/#/redemption`);
  await page.waitForSelector("#agent", { timeout: T });
  const AGENT = await page.locator("#agent").getAttribute("title");
  const grantPayee = async () => "0x" + (await callRaw(escrowAddress, ESCROW, "grant", [USER, AGENT])).slice(26, 66);
  await page.selectOption("#link-provider", "anthropic");
  await page.fill("#link-account-id", env.BILLING_ACCOUNT);
  await page.fill("#link-credential", "not-the-scoped-credential");
  await page.click("#link-account");
  await waitText("#link-status", /did not accept this account and credential.*Nothing was stored/);
  if (await page.locator("tr[data-linked]").count()) throw new Error("a refused credential linked an account");
  step("link with a refused credential: readable, nothing stored", { message: await status("#link-status") });
  await page.fill("#link-credential", env.BILLING_CREDENTIAL);
  await page.click("#link-account");
  await page.waitForSelector("tr[data-linked=anthropic]", { timeout: T });
  if ((await page.content()).includes(env.BILLING_CREDENTIAL)) throw new Error("the credential is in the page");
  await waitText("[data-balance=anthropic]", /^\$5(\.00)?$/);
  await page.click("button[data-action=link][data-provider=anthropic]");
  await waitText("[data-onchain=anthropic]", /linked on chain/);
  step("redemption: account linked in the page with its live balance, then on chain");

  await page.evaluate(() => { window.__wallet.rejectNext = true; });
  await page.fill("#grant-limit", "10000");
  await page.fill("#grant-slippage", "5");
  await page.click("#grant-button");
  await waitText("#grant-status", /You rejected the request/);
  if (BigInt(await grantPayee()) !== 0n) throw new Error("a rejected grant left a grant on chain");
  step("rejected signature (grant): readable, no grant", { message: await status("#grant-status") });
  await page.fill("#grant-limit", "10000");
  await page.click("#grant-button");
  await waitText("[data-grant-limit=CLD]", /^10,000\.00\b/);
  await waitText("[data-grant-state]", /active/);
  if ((await grantPayee()).toLowerCase() !== AGENT.toLowerCase()) throw new Error("the grant is not on chain");
  step("grant the agent 10,000 CLD a day (signed by the wallet, escrow approved)");

  await page.fill("#rule-below", "twenty");
  await page.click("#add-rule");
  await waitText("#rule-status", /not saved: .*not a dollar amount/);
  if (await page.locator("tr[data-rule]").count()) throw new Error("a refused rule was listed");
  step("bad rule: readable, nothing saved", { message: await status("#rule-status") });
  // The escrow bounds slippage against a 600-s TWAP: let the Oracle's history cover it.
  await rpc("evm_increaseTime", [700]);
  await rpc("evm_mine", []);
  await page.fill("#rule-below", "20");
  await page.fill("#rule-add", "20");
  await page.fill("#rule-max", "10000");
  await page.click("#add-rule");
  await page.waitForSelector("tr[data-rule]", { timeout: T });
  const redeemed = Date.now() + 60_000;
  for (;;) {
    // No wait for the row: innerText() would wait its default 30 s for one not drawn yet.
    const rows = page.locator("[data-redemption-status]");
    const state = (await rows.count()) ? await rows.first().innerText() : "";
    if (/^released/.test(state)) break;
    if (Date.now() > redeemed) throw new Error(`the rule's redemption did not release (status: ${state || "none"}; rule: ${await page.locator("[data-rule-outcome]").first().innerText()})`);
    await page.waitForTimeout(500);
    await page.click("#refresh-redemptions");
  }
  const receipt = {
    sold: await status("[data-sold]"),
    usd: await status("[data-usd]"),
    billing_ref: await page.locator("[data-billing-ref] code").getAttribute("title"),
  };
  if (receipt.usd !== "$20" && receipt.usd !== "$20.00") throw new Error(`redemption USD ${receipt.usd}`);
  await page.reload();
  await waitText("[data-balance=anthropic]", /^\$25(\.00)?$/);
  await waitText("[data-grant-spent=CLD]", /[1-9]/);
  await page.screenshot({ path: join(SHOTS, "redemption.png"), fullPage: true });
  await grab("redemption");
  step("auto-topup rule fired: redemption released with its receipt; balance $25", receipt);
  result.redemption = receipt;
  const ruleId = await page.locator("tr[data-rule]").first().getAttribute("data-rule");
  await page.click(`button[data-action=switch-rule][data-rule="${ruleId}"]`);
  await waitText(`[data-rule-state="${ruleId}"]`, /^off$/);
  step("switch the rule off (the agent stops checking it)", { rule: ruleId });
  result.rule_id = ruleId;
  await page.click("#revoke-grant");
  await page.waitForSelector("[data-grant-state=revoked]", { timeout: T });
  if (BigInt(await grantPayee()) !== 0n) throw new Error("the revoked grant is still live on chain");
  step("revoke the grant");

  // ─── Enterprise desk: not for a user's key; the org owner's wallet sees it ─
  await page.goto(`${DASHBOARD}/#/enterprise`);
  await waitText("#desk-error", /not an org/);
  step("enterprise desk refused to a key that is not the org owner's", { message: await status("#desk-error") });
  const orgContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await orgContext.exposeFunction("__anvil", async (method, params) => rpc(method, params));
  await orgContext.addInitScript(testWallet, { account: OWNER, chainId: 31337 });
  const orgPage = await orgContext.newPage();
  page = orgPage;
  await page.goto(`${DASHBOARD}/#/enterprise`);
  await page.click("#connect");
  await page.waitForSelector("#account", { timeout: T });
  await page.click("#get-key");
  await waitText("#org-name", /Acme Research/);
  await waitText("[data-org-spendable=USDC]", /\d/);
  await page.waitForSelector("tr[data-member]", { timeout: T });
  await waitText("[data-member-usage]", /1 req/);
  await page.fill("#member-name", "grace");
  await page.fill("#member-budget", "10");
  await page.selectOption("#member-budget-asset", "USDC");
  await page.click("#add-member");
  await page.waitForSelector("#member-key", { timeout: T });
  const memberKey = await status("#member-key");
  await page.waitForFunction(() => document.querySelectorAll("tr[data-member]").length === 2, null, { timeout: T });
  const keysShown = await page.locator("#members").innerText();
  if (!keysShown.includes(memberKey.slice(0, 10)) || keysShown.includes(memberKey)) throw new Error("the desk must show key prefixes only");
  await page.evaluate(() => { const k = document.querySelector("#member-key"); if (k) k.textContent = "px-…(shown once)"; });
  await page.screenshot({ path: join(SHOTS, "enterprise.png"), fullPage: true });
  await grab("enterprise (org owner)");
  step("enterprise desk: org vault, members, key prefixes, budgets, usage; a new member key", {
    vault: await status("[data-org-spendable=USDC]"),
  });
  result.member_key_prefix = memberKey.slice(0, 10);
  await orgContext.close();

  page = (await context.pages())[0];

  // ─── Hedge: perpetual liquidity, a long with its P&L, options written by another account ─
  const perpAddress = config.contracts.Perp;
  const optionsAddress = config.contracts.Options;
  const positionCount = () => call(perpAddress, PERP, "position_count", []);
  const perpAllowance = () => call(usdc, ERC20, "allowance", [USER, perpAddress]);
  await page.goto(`${DASHBOARD}/#/hedge`);
  await waitText("[data-twap=GPT]", /^\$\d/);
  await page.waitForSelector("#perp-provide", { timeout: T });
  await page.fill("#perp-provide-amount", "300");
  await page.click("#perp-provide");
  await waitText("#perp-status", /Provide 300\.?0* USDC of liquidity: confirmed/);
  await page.waitForFunction(() => BigInt(document.querySelector("#perp-shares")?.dataset.shares ?? "0") > 0n, null, { timeout: T });
  if (!((await call(perpAddress, PERP, "shares_of", [USER])) > 0n)) throw new Error("providing liquidity minted no shares");
  step("hedge: provide 300 USDC of perpetual liquidity", { pool: await status("#perp-pool") });

  const heldBefore = { usdc: await walletUsdc(), count: await positionCount(), allowance: await perpAllowance() };
  await page.fill("#perp-margin", "5");
  await page.fill("#perp-notional", "100");
  await page.click("#perp-open");
  await waitText("#perp-status", /Leverage too high/);
  if ((await walletUsdc()) !== heldBefore.usdc || (await positionCount()) !== heldBefore.count || (await perpAllowance()) !== heldBefore.allowance) {
    throw new Error("a refused position changed the chain");
  }
  step("leverage too high: readable, nothing changed", { message: await status("#perp-status") });

  await page.fill("#perp-margin", "20");
  await page.fill("#perp-notional", "100");
  await waitText("#perp-leverage", /^5\.03×$/);
  const openFee = await status("#perp-open-fee");
  await page.click("#perp-open");
  await waitText("#perp-status", /Open a long of 100(\.00)? USDC on GPT: confirmed/);
  await page.waitForSelector("tr[data-position] [data-pnl]", { timeout: T });
  const positionId = await page.locator("tr[data-position]").first().getAttribute("data-position");
  await waitText(`[data-pnl="${positionId}"]`, /^[+−]\d.* USDC$/);
  step("open a long: leverage and fee shown, position with P&L now", { fee: openFee, pnl: await status(`[data-pnl="${positionId}"]`) });

  // A second account writes a capped call on GPT and offers it, in its own browser.
  const writerContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await writerContext.exposeFunction("__anvil", async (method, params) => rpc(method, params));
  await writerContext.addInitScript(testWallet, { account: OTHER, chainId: 31337 });
  const writer = await writerContext.newPage();
  await writer.goto(`${DASHBOARD}/#/hedge`);
  await writer.click("#connect");
  await writer.waitForSelector("#write-button", { timeout: T });
  await writer.selectOption("#write-token", "GPT");
  await writer.selectOption("#write-kind", "call");
  await writer.fill("#write-strike", "3.50");
  await writer.fill("#write-bound", "4.50");
  await writer.fill("#write-size", "10");
  await writer.fill("#write-units", "5");
  await writer.fill("#write-premium", "1");
  await writer.click("#write-button");
  await writer.waitForFunction(() => /Offer 5 units at 1(\.00)? USDC: confirmed/.test(document.querySelector("#option-status")?.textContent ?? ""), null, { timeout: T, polling: 100 });
  await writer.waitForSelector("tr[data-holding]", { timeout: T });
  await writerContext.close();
  step("a second account writes 5 capped calls (GPT $3.50–$4.50) and offers them");

  await page.reload();
  await page.waitForSelector("button[data-action=buy]", { timeout: T });
  const offerId = await page.locator("button[data-action=buy]").first().getAttribute("data-offer");
  await page.fill(`[data-buy-units="${offerId}"]`, "2");
  await page.click(`button[data-action=buy][data-offer="${offerId}"]`);
  await waitText("#option-status", /Buy 2 units of offer .*: confirmed/);
  await page.waitForSelector("tr[data-holding]", { timeout: T });
  const seriesId = await page.locator("tr[data-holding]").first().getAttribute("data-holding");
  await waitText(`[data-units="${seriesId}"]`, /^2$/);
  await waitText(`[data-value="${seriesId}"]`, /USDC at the TWAP/);
  await waitText(`[data-series-name="${seriesId}"]`, /^GPT-\d\d[A-Z]{3}\d\d-3\.5\/4\.5-C$/); // a short name, not the id
  if ((await call(optionsAddress, OPTIONS, "balanceOf", [USER, BigInt(seriesId)])) !== 2n) throw new Error("the bought units are not the wallet's");
  await page.screenshot({ path: join(SHOTS, "hedge.png"), fullPage: true });
  await grab("hedge");
  step("buy 2 units: the holding with its value at the TWAP", { value: await status(`[data-value="${seriesId}"]`) });

  const beforeClose = await walletUsdc();
  await page.click(`button[data-action=close][data-position="${positionId}"]`);
  await waitText("#perp-status", new RegExp(`Close position ${positionId}: confirmed`));
  await page.waitForFunction((id) => !document.querySelector(`tr[data-position="${id}"]`), positionId, { timeout: T });
  if (!((await walletUsdc()) > beforeClose)) throw new Error("closing the long paid nothing");
  step("close the long (min payout from the preview)", { paid: String((await walletUsdc()) - beforeClose) });
  result.hedge = { position_id: positionId, series_id: seriesId, offer_id: offerId };

  // ─── Sell capacity: a refused key and an unapproved bond open nothing; then a lot ─
  const creditEscrow = config.contracts.CreditEscrow;
  const lotCount = () => call(creditEscrow, CREDIT_ESCROW, "lot_count", []);
  await page.goto(`${DASHBOARD}/#/sell`);
  await page.waitForSelector("#seller-provider", { timeout: T });
  await page.selectOption("#seller-provider", "openai");
  await page.fill("#seller-base-url", `${UPSTREAM}/v1`);
  await page.fill("#seller-face", "250");
  await page.selectOption("#seller-kind", "listed");
  await page.fill("#seller-rate", "50");
  await page.fill("#seller-days", "30");
  await page.check("#seller-declare");
  await page.waitForSelector("#seller-bond[data-approved=false]", { timeout: T });
  const lotsBefore = await lotCount();
  const bondBefore = await walletUsdc();
  await page.fill("#seller-api-key", "sk-not-a-key-the-provider-knows");
  await page.click("#open-lot");
  await waitText("#onboard-status", /refused the API key/);
  if ((await lotCount()) !== lotsBefore) throw new Error("a refused key opened a lot");
  step("sell: a key the provider refuses: readable, no lot", { message: await status("#onboard-status") });
  await page.fill("#seller-api-key", "sk-browser-seller");
  await page.click("#open-lot");
  await waitText("#onboard-status", /not approved|approve it first/i);
  if ((await lotCount()) !== lotsBefore || (await walletUsdc()) !== bondBefore) throw new Error("an unapproved bond opened a lot or moved USDC");
  step("sell: bond not approved: readable, no lot", { message: await status("#onboard-status") });
  await page.click("#approve-bond");
  await page.waitForSelector("#seller-bond[data-approved=true]", { timeout: T });
  await page.click("#open-lot");
  await waitText("#onboard-status", /Lot \d+ opened on chain/, 60_000);
  const sellerLot = await page.locator("#onboard").getAttribute("data-opened-lot");
  await page.waitForSelector(`tr[data-lot="${sellerLot}"] [data-lot-status=open]`, { timeout: T });
  if ((await lotCount()) !== lotsBefore + 1n) throw new Error("opening a lot did not add exactly one");
  if ((await page.inputValue("#seller-api-key")) !== "") throw new Error("the page kept the seller's key");
  if ((await page.content()).includes("sk-browser-seller")) throw new Error("the seller's key is in the page");
  await page.screenshot({ path: join(SHOTS, "sell.png"), fullPage: true });
  await grab("sell");
  step("sell: onboarding opened a listed lot at 50 % of list (key sealed on the server)", { lot: sellerLot });
  result.seller_lot = sellerLot;
  result.bond_paid = String(bondBefore - (await walletUsdc()));

  // ─── Market: the TWAP chart, after a keeper's Oracle updates over three periods ─
  const oracle = config.contracts.Oracle;
  for (let i = 0; i < 3; i++) {
    await rpc("evm_increaseTime", [61]); // the local Oracle's period is 60 s
    await rpc("evm_mine", []);
    await sendAs(OTHER, oracle, ["function update(address token) returns (bool)"], "update", [cld]);
  }
  await page.goto(`${DASHBOARD}/#/market`);
  await page.waitForSelector("tr[data-pool=CLD] svg.spark polyline", { timeout: T });
  const chartPoints = (await page.locator("tr[data-pool=CLD] svg.spark polyline").getAttribute("points")).trim().split(/\s+/).length;
  if (chartPoints < 3) throw new Error(`the CLD TWAP chart has ${chartPoints} points`);
  await page.screenshot({ path: join(SHOTS, "market.png"), fullPage: true });
  step("market: TWAP chart from the Oracle's observations", { points: chartPoints });
  result.chart_points = chartPoints;
  await grab("market");

  // ─── Phone width: every page at 390 px, no horizontal scroll; its text for the scan ─
  await page.setViewportSize({ width: 390, height: 844 });
  const PHONE_PAGES = {
    portfolio: "#portfolio-total",
    market: "#lp-position [data-lp], #lp-balance",
    utilize: "#model",
    usage: "#usage-table",
    hedge: "[data-twap=GPT]",
    sell: "#lot-table",
    redemption: "tr[data-redemption]",
    enterprise: "#desk-error, #desk .notice, #key-box",
  };
  const tooWide = [];
  for (const [name, ready] of Object.entries(PHONE_PAGES)) {
    await page.goto(`${DASHBOARD}/#/${name}`);
    await page.waitForSelector(`section[data-page=${name}]`, { timeout: T });
    await page.waitForSelector(ready, { timeout: T });
    const width = await page.evaluate(() => {
      const wide = [...document.querySelectorAll("body *")]
        .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5 && !el.closest("table"))
        .slice(0, 3)
        .map((el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${el.className}`);
      return { scroll: document.documentElement.scrollWidth, wide };
    });
    if (width.scroll > 390) tooWide.push(`${name}: ${width.scroll} px (${width.wide.join(", ")})`);
    await grab(`${name} (390 px)`);
    if (name === "portfolio") await page.screenshot({ path: join(SHOTS, "phone-portfolio.png"), fullPage: true });
  }
  if (tooWide.length) throw new Error(`wider than a 390 px phone: ${tooWide.join("; ")}`);
  step("phone: every page at 390 px without horizontal scroll", { pages: Object.keys(PHONE_PAGES).length });

  // ─── Signed mode: a session key made in the tab, signed by the wallet, relayed; a signed request ─
  await page.goto(`${DASHBOARD}/#/utilize`);
  await page.waitForSelector("#start-session", { timeout: T });
  await page.selectOption("#model", "gpt-4o");
  await page.selectOption("#pay-with", "USDC");
  await page.click("#start-session");
  await waitText("#session-status", /Session \d+ requested: at most 5\.00 USDC in all/, 60_000);
  const bearer = { authorization: `Bearer ${await page.evaluate(() => sessionStorage.getItem("promptex.apiKey"))}` };
  const registeredBy = Date.now() + 60_000; // the coordinator relays it, the indexer records it
  for (;;) {
    const lanes = await (await fetch(`${DASHBOARD}/v1/promptex/lanes?asset=USDC`, { headers: bearer })).json();
    if (lanes.session !== null && lanes.session !== undefined) break;
    if (Date.now() > registeredBy) throw new Error(`the session was not registered: ${JSON.stringify(lanes)}`);
    await page.waitForTimeout(500);
  }
  await page.click("#send-prompt");
  await waitText("#signed-note", /Signed by this tab's session key on lane 0/, 60_000);
  await waitText("#metered-cost", /\d.* USDC/, 60_000);
  result.signed_request_id = await status("#request-id");
  step("signed mode: a session key signed by the wallet, relayed, and a request signed in the tab", { note: await status("#signed-note") });

  await page.click("#revoke-session");
  await waitText("#session-status", /Revoked session \d+ in USDC/);
  if (await page.evaluate(() => Object.keys(sessionStorage).some((k) => k.startsWith("promptex.session.")))) throw new Error("the tab kept the revoked session's key");
  step("signed mode: the session revoked from the page (the wallet sends revoke_session_key)");

  result.ok = true;
  console.log("RESULT " + JSON.stringify(result));
} catch (err) {
  console.error("FAILED:", err?.stack ?? err);
  if (page) {
    await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => undefined);
    console.error("page text:\n" + (await page.innerText("body").catch(() => "?")).slice(0, 3000));
  }
  // Another account's page still open (the option writer's) failed the step: show what it said.
  for (const other of browser.contexts().flatMap((c) => c.pages()).filter((p) => p !== page)) {
    const said = await other.innerText("body", { timeout: 2000 }).catch(() => "?");
    console.error(`other page ${other.url()}:\n` + said.slice(-2500));
  }
  console.log("RESULT " + JSON.stringify({ ...result, ok: false, error: String(err?.message ?? err) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
