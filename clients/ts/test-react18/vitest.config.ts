/**
 * The hook tests under React 18 (`npm run test:react18`, after `npm --prefix test-react18 ci`).
 *
 * npm aliases cannot do this: react-dom and @testing-library/react `require("react")` and get
 * the one at the top of clients/ts/node_modules (React 19). Here react, react-dom and
 * @testing-library/react come from test-react18/node_modules, where each finds React 18; the
 * aliases point the client's sources and the tests at them. versions.test.ts checks it.
 */
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  root: here(".."),
  resolve: {
    alias: {
      // A key matches itself and paths under it (react/jsx-runtime), not react-dom.
      react: here("node_modules/react"),
      "react-dom": here("node_modules/react-dom"),
      "@testing-library/react": here("node_modules/@testing-library/react"),
    },
  },
  test: {
    include: ["test/react*.test.tsx", "test-react18/*.test.ts"],
    environment: "node",
    env: { WSE_EXPECT_REACT: "18" },
    testTimeout: 60_000,
  },
});
