// One throughput run of the TS client, in Node or (with --page) in headless Chromium.
//   node bench/run.mjs URL --format json --count 50000 --size 60 [--page http://127.0.0.1:P/bench/index.html]
// Prints one JSON line.
const args = process.argv.slice(2);
const url = args[0];
const opt = (k, d) => {
  const i = args.indexOf(k);
  return i < 0 ? d : args[i + 1];
};
const a = {
  url,
  format: opt("--format", "json"),
  count: Number(opt("--count", "50000")),
  size: Number(opt("--size", "60")),
  warmup: Number(opt("--warmup", "2000")),
  timeout: Number(opt("--timeout", "120")),
};
const page = opt("--page", null);
if (page) {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
      "--disable-component-update", "--disable-sync", "--disable-quic"],
  });
  try {
    const p = await browser.newPage();
    await p.goto(page);
    await p.waitForFunction(() => !!globalThis.WSE_BENCH);
    const version = browser.version();
    const r = await p.evaluate((x) => globalThis.WSE_BENCH(x), { ...a, where: `chromium ${version}` });
    console.log(JSON.stringify(r));
  } finally {
    await browser.close();
  }
} else {
  const { throughput } = await import("./dist/node.mjs");
  console.log(JSON.stringify(await throughput({ ...a, where: `node ${process.version}` })));
  process.exit(0);
}
