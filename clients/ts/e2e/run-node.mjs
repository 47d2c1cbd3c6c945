// Runs e2e scenarios in Node (WebSocket from the `ws` package).
//   node e2e/run-node.mjs --engine ws://... --tokens http://.../token [--reference] a b c
import { run } from "./dist/scenarios.mjs";

const args = process.argv.slice(2);
const opt = (k) => {
  const i = args.indexOf(k);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const engine = opt("--engine"), tokens = opt("--tokens");
const ri = args.indexOf("--reference");
const reference = ri >= 0;
if (reference) args.splice(ri, 1);
for (const name of args) {
  console.log(JSON.stringify(await run(name, { engine, tokenUrl: tokens, where: "node", reference })));
}
process.exit(0);
