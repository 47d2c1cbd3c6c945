import { throughput } from "./throughput.js";

(globalThis as Record<string, unknown>)["WSE_BENCH"] = throughput;
