/**
 * React bindings (React 18 and 19): a provider that owns (or is given) a client, `useWSE()`,
 * `useTopic(topic)`, `usePresence(topic)` and `useConnectionState()`.
 *
 * Subscriptions are reference-counted per client: many components on one topic share one wire
 * subscription, and the unsubscribe is deferred a moment so that StrictMode's mount, unmount,
 * mount sequence (and a quick remount) does not leave and rejoin the topic.
 */
import { createContext, useContext, useEffect, useRef, useState, useSyncExternalStore, type ReactNode } from "react";
import { WSEClient } from "./client.js";
import type { ClientOptions } from "./options.js";
import type { ConnectionState, PresenceMember, SubscribeResult, WSEEvent } from "./events.js";

const Ctx = createContext<WSEClient | null>(null);

export interface WSEProviderProps {
  /** Server URL; the provider creates the client, connects it on mount, closes it on unmount. */
  url?: string;
  options?: ClientOptions;
  /** Or a client of your own (the provider neither connects nor closes it). */
  client?: WSEClient;
  children?: ReactNode;
}

export function WSEProvider({ url, options, client, children }: WSEProviderProps) {
  const [own] = useState(() => (client ? null : new WSEClient(requireUrl(url), options)));
  const c = client ?? own!;
  const closer = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => {
    if (!own) return;
    if (closer.current) clearTimeout(closer.current);
    closer.current = null;
    own.connect().catch(() => undefined); // the error is in client.error and the state
    return () => {
      // Deferred: StrictMode unmounts and remounts at once, which must not close the client.
      closer.current = setTimeout(() => own.close(), 0);
    };
  }, [own]);
  return <Ctx.Provider value={c}>{children}</Ctx.Provider>;
}

function requireUrl(url: string | undefined): string {
  if (!url) throw new Error("WSEProvider needs url (or client)");
  return url;
}

/** The provider's client. */
export function useWSE(): WSEClient {
  const c = useContext(Ctx);
  if (!c) throw new Error("useWSE must be used inside <WSEProvider>");
  return c;
}

/** The connection's state, re-rendering on change. */
export function useConnectionState(): ConnectionState {
  const c = useWSE();
  return useSyncExternalStore(
    (cb) => c.on("state", cb),
    () => c.state,
    () => c.state,
  );
}

// ---- shared subscriptions ------------------------------------------------------------------

interface TopicEntry {
  refs: number;
  presence: number;
  result: SubscribeResult | null;
  error: Error | null;
  pending: Promise<void> | null;
  leave: ReturnType<typeof setTimeout> | null;
  wirePresence: boolean;
  listeners: Set<() => void>;
}

const hubs = new WeakMap<WSEClient, Map<string, TopicEntry>>();

/** How long an unused topic stays subscribed before the client leaves it, ms. */
export const LEAVE_DELAY_MS = 50;

function hub(c: WSEClient): Map<string, TopicEntry> {
  let h = hubs.get(c);
  if (!h) hubs.set(c, (h = new Map()));
  return h;
}

function changed(e: TopicEntry): void {
  for (const l of [...e.listeners]) l();
}

function ensure(c: WSEClient, topic: string, e: TopicEntry): void {
  const wantPresence = e.presence > 0;
  if (e.pending || (e.result && (!wantPresence || e.wirePresence))) return;
  e.pending = c
    .subscribe(topic, { presence: wantPresence })
    .then(
      (r) => {
        e.result = r;
        e.error = r.ok ? null : new Error(r.errors[topic] ?? "subscription refused");
        e.wirePresence = wantPresence;
      },
      (err: unknown) => {
        e.error = err instanceof Error ? err : new Error(String(err));
      },
    )
    .finally(() => {
      e.pending = null;
      changed(e);
      if (e.refs > 0 && e.presence > 0 && !e.wirePresence && !e.error) ensure(c, topic, e);
    });
}

/** Takes a reference on `topic` for the caller; the returned function gives it back. */
export function acquireTopic(c: WSEClient, topic: string, presence = false): () => void {
  const h = hub(c);
  let e = h.get(topic);
  if (!e) {
    e = { refs: 0, presence: 0, result: null, error: null, pending: null, leave: null, wirePresence: false, listeners: new Set() };
    h.set(topic, e);
  }
  const entry = e;
  if (entry.leave) clearTimeout(entry.leave);
  entry.leave = null;
  entry.refs++;
  if (presence) entry.presence++;
  ensure(c, topic, entry);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    entry.refs--;
    if (presence) entry.presence--;
    if (entry.refs > 0) return;
    entry.leave = setTimeout(() => {
      if (entry.refs > 0 || h.get(topic) !== entry) return;
      h.delete(topic);
      if (!c.closed) c.unsubscribe(topic).catch(() => undefined);
    }, LEAVE_DELAY_MS);
  };
}

function useEntryStatus(c: WSEClient, topic: string): { subscribed: boolean; error: Error | null } {
  const [, bump] = useState(0);
  useEffect(() => {
    const e = hub(c).get(topic);
    if (!e) return;
    const l = () => bump((n) => n + 1);
    e.listeners.add(l);
    return () => {
      e.listeners.delete(l);
    };
  }, [c, topic]);
  const e = hub(c).get(topic);
  return { subscribed: !!e?.result?.ok, error: e?.error ?? null };
}

export interface TopicState<P> {
  /** The latest messages, oldest first (at most `keep`). */
  messages: WSEEvent<P>[];
  /** The latest message. */
  last: WSEEvent<P> | undefined;
  /** The server acknowledged the subscription. */
  subscribed: boolean;
  error: Error | null;
}

/**
 * Subscribes while the component is mounted and returns the latest messages of `topic`
 * (`keep`: how many, 100). `onMessage` sees every message, also those beyond `keep`.
 */
export function useTopic<P = unknown>(
  topic: string,
  opts: { keep?: number; onMessage?: (ev: WSEEvent<P>) => void } = {},
): TopicState<P> {
  const c = useWSE();
  const keep = opts.keep ?? 100;
  const onMessage = useRef(opts.onMessage);
  onMessage.current = opts.onMessage;
  const [messages, setMessages] = useState<WSEEvent<P>[]>([]);
  useEffect(() => {
    const off = c.on<P>("*", (ev) => {
      if (ev.topic !== topic) return;
      onMessage.current?.(ev);
      setMessages((m) => (m.length >= keep ? [...m.slice(m.length - keep + 1), ev] : [...m, ev]));
    });
    const release = acquireTopic(c, topic);
    return () => {
      off();
      release();
    };
  }, [c, topic, keep]);
  const status = useEntryStatus(c, topic);
  return { messages, last: messages[messages.length - 1], ...status };
}

export interface PresenceState {
  /** User id to presence data and connection count. */
  members: Map<string, PresenceMember>;
  count: number;
  subscribed: boolean;
  error: Error | null;
}

/** Who is in `topic` (subscribes with presence while mounted). */
export function usePresence(topic: string): PresenceState {
  const c = useWSE();
  const [members, setMembers] = useState<Map<string, PresenceMember>>(() => c.presence(topic));
  useEffect(() => {
    const off = c.on<{ topic: string }>("presence", (ev) => {
      if (ev.payload.topic === topic) setMembers(c.presence(topic));
    });
    const release = acquireTopic(c, topic, true);
    setMembers(c.presence(topic));
    return () => {
      off();
      release();
    };
  }, [c, topic]);
  const status = useEntryStatus(c, topic);
  return { members, count: members.size, ...status };
}
