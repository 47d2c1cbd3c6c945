/** Small helpers shared by the client's parts: deferred promises, timeouts, ids, URLs. */
import { TimeoutError } from "./errors.js";

export interface Pending<T> {
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

/** A promise with its resolve and reject; an unobserved rejection is not reported. */
export function deferred<T>(): Pending<T> & { promise: Promise<T> } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => {
    resolve = a;
    reject = b;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** `p`, or a TimeoutError naming `what` after `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
/** Node (not a browser, nor a DOM emulation such as jsdom). */
export const isNode = !!proc?.versions?.node && typeof (globalThis as { window?: unknown }).window === "undefined";

export function asRecord(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

let cidCounter = 0;
/** A fresh correlation id for a request. */
export function newCid(): string {
  const r = globalThis.crypto?.randomUUID?.();
  return r ? r.replace(/-/g, "") : `${Date.now().toString(16)}${(++cidCounter).toString(16)}${Math.random().toString(16).slice(2)}`;
}

export function withQuery(url: string, key: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}
