// Runs e2e scenarios in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core)
// and, with --demo, renders the React demo page and takes its screenshot.
//   node e2e/run-browser.mjs --page http://127.0.0.1:P/e2e/index.html --engine ws://... --tokens http://.../token a b c
//   node e2e/run-browser.mjs --demo http://127.0.0.1:P/ --screenshot out.png
// Prints one JSON line per scenario: {name, ok, result | error}.
import { chromium } from "playwright-core";

const args = process.argv.slice(2);
const opt = (k) => {
  const i = args.indexOf(k);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const page_ = opt("--page"), engine = opt("--engine"), tokens = opt("--tokens"), demo = opt("--demo"), shot = opt("--screenshot");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-quic"],
});
try {
  if (demo) {
    const ctx = await browser.newContext({ viewport: { width: 900, height: 400 } });
    const p = await ctx.newPage();
    p.on("console", (m) => console.error(`[page] ${m.text()}`));
    await p.goto(demo);
    // Live: the ticker shows prices that change, the presence list names who is here.
    await p.waitForFunction(() => Number(document.querySelector("[data-ticks]")?.getAttribute("data-ticks")) >= 15, null, { timeout: 30_000 });
    await p.waitForFunction(() => document.querySelectorAll("[data-member]").length >= 1, null, { timeout: 30_000 });
    const first = await p.textContent("[data-ticker]");
    await p.waitForFunction((f) => document.querySelector("[data-ticker]")?.textContent !== f, first, { timeout: 30_000 });
    const state = await p.textContent("[data-state]");
    const members = await p.$$eval("[data-member]", (els) => els.map((e) => e.getAttribute("data-member")));
    const ticker = await p.textContent("[data-ticker]");
    const ticks = Number(await p.getAttribute("[data-ticks]", "data-ticks"));
    if (shot) await p.screenshot({ path: shot });
    console.log(JSON.stringify({ name: "react_demo", ok: true, result: { state, members, ticker, ticks, before: first } }));
  } else {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    p.on("console", (m) => {
      if (m.type() === "error") console.error(`[page] ${m.text()}`);
    });
    await p.goto(page_);
    await p.waitForFunction(() => !!globalThis.WSE_E2E);
    const secure = await p.evaluate(() => globalThis.isSecureContext && !!crypto.subtle);
    if (!secure) throw new Error("the page is not a secure context: WebCrypto is missing");
    for (const name of args) {
      const env = { engine, tokenUrl: tokens, where: "browser" };
      const r = await p.evaluate(([n, e]) => globalThis.WSE_E2E.run(n, e), [name, env]);
      console.log(JSON.stringify(r));
    }
  }
} finally {
  await browser.close();
}
