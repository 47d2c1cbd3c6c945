/** Reconnect delays: exponential growth, a cap, and jitter. */
export interface BackoffOptions {
  /** First delay, ms (250). */
  backoffInitial: number;
  /** Growth per attempt (2). */
  backoffFactor: number;
  /** The cap, ms (30,000). */
  backoffMax: number;
}

/**
 * The delay before reconnect attempt `attempt` (0-based): `d = min(max, initial * factor^n)`,
 * then a uniform pick in `[d/2, d]` so that clients dropped together do not return together.
 */
export function backoffDelay(attempt: number, o: BackoffOptions, random: () => number = Math.random): number {
  const d = Math.min(o.backoffMax, o.backoffInitial * Math.pow(o.backoffFactor, Math.min(attempt, 64)));
  return d / 2 + random() * (d / 2);
}
