import { run, scenarios } from "./scenarios.js";

(globalThis as Record<string, unknown>)["WSE_E2E"] = { run, names: Object.keys(scenarios) };
