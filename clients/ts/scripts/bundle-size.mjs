// Bundle sizes, minified by esbuild and gzipped: wse-client, wse-client/react, and npm
// `centrifuge` (Centrifugo's JS client) for comparison. Prints one JSON line.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
async function size(name, contents, external = []) {
  const r = await build({
    stdin: { contents, resolveDir: root, loader: "ts" },
    bundle: true, minify: true, format: "esm", platform: "browser", write: false, external, target: "es2022", logLevel: "error",
  });
  const code = r.outputFiles[0].contents;
  return { name, min_bytes: code.length, min_gz_bytes: gzipSync(code, { level: 9 }).length };
}
const ver = (p) => JSON.parse(readFileSync(join(root, "node_modules", p, "package.json"), "utf8")).version;
const out = [
  await size("wse-client (connect, all features, with @msgpack/msgpack)", 'export { connect, WSEClient } from "./src/index.ts";'),
  await size("wse-client/react (hooks; react itself external)", 'export * from "./src/react.tsx";', ["react", "react-dom"]),
  await size(`centrifuge ${ver("centrifuge")} (Centrifuge class)`, 'export { Centrifuge } from "centrifuge";'),
];
console.log(JSON.stringify(out));
