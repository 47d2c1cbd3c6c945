// Bundles the e2e scenarios (browser and Node), the throughput bench and the React demo with esbuild.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const common = { bundle: true, logLevel: "warning", absWorkingDir: root, target: "es2022" };
await Promise.all([
  build({ ...common, entryPoints: ["e2e/browser-entry.ts"], outfile: "e2e/dist/browser.js", format: "iife", platform: "browser" }),
  build({ ...common, entryPoints: ["e2e/scenarios.ts"], outfile: "e2e/dist/scenarios.mjs", format: "esm", platform: "node", external: ["ws"] }),
  build({ ...common, entryPoints: ["bench/browser-entry.ts"], outfile: "bench/dist/bench.js", format: "iife", platform: "browser", minify: true }),
  build({ ...common, entryPoints: ["bench/throughput.ts"], outfile: "bench/dist/node.mjs", format: "esm", platform: "node", external: ["ws"], minify: true }),
  build({
    ...common,
    entryPoints: ["demo/demo.tsx"],
    outfile: "demo/dist/demo.js",
    format: "iife",
    platform: "browser",
    jsx: "automatic",
    minify: true,
    define: { "process.env.NODE_ENV": '"production"' },
  }),
]);
