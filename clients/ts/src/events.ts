/** A v2 envelope as it arrives (after decoding). */
export interface Envelope {
  c?: string;
  t?: string;
  type?: string;
  id?: string;
  ts?: string;
  seq?: number;
  tp?: string;
  e?: string;
  o?: number;
  p?: unknown;
  payload?: unknown;
  cid?: string;
  [key: string]: unknown;
}

/** One received message. `topic`, `epoch` and `offset` are set on topic publications. */
export class WSEEvent<P = unknown> {
  readonly type: string;
  readonly payload: P;
  readonly category: string | undefined;
  readonly id: string | undefined;
  readonly seq: number | undefined;
  readonly ts: string | undefined;
  readonly topic: string | undefined;
  readonly epoch: string | undefined;
  readonly offset: number | undefined;
  readonly cid: string | undefined;
  constructor(readonly raw: Envelope) {
    this.type = (raw.t ?? raw.type ?? "") as string;
    this.payload = (raw.p !== undefined ? raw.p : raw.payload) as P;
    this.category = raw.c;
    this.id = raw.id;
    this.seq = typeof raw.seq === "number" ? raw.seq : undefined;
    this.ts = typeof raw.ts === "string" ? raw.ts : undefined;
    this.topic = typeof raw.tp === "string" ? raw.tp : undefined;
    this.epoch = typeof raw.e === "string" ? raw.e : undefined;
    this.offset = typeof raw.o === "number" ? raw.o : undefined;
    this.cid = typeof raw.cid === "string" ? raw.cid : undefined;
  }
}

/** The server's answer about one topic of a subscribe with recovery. */
export interface TopicRecovery {
  topic: string;
  recovered: boolean;
  epoch: string | null;
  offset: number | null;
  count: number;
}

/** The server's ack of a subscribe or unsubscribe. */
export interface SubscribeResult {
  ok: boolean;
  successTopics: string[];
  failedTopics: string[];
  errors: Record<string, string>;
  recovery: Record<string, TopicRecovery>;
  raw: Envelope;
}

/** Why messages of a topic are lost for good (the payload of a `recovery_gap` event). */
export interface Gap {
  topic: string;
  epoch: string | null;
  offset: number | null;
  reason: "not_recovered" | "no_recovery" | "missed";
  server_epoch: string | null;
  server_offset: number | null;
}

/** A presence member: its data and how many connections it has in the topic. */
export interface PresenceMember {
  data: unknown;
  connections?: number;
}

export const GAP = "recovery_gap";
export const OVERFLOW = "queue_overflow";

/** The connection's life: `connecting` (first attempt), `open`, `reconnecting`, `closed`. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Counters of what the client received and did. */
export interface ClientStats {
  received: number;
  duplicates: number;
  dropped: number;
  gaps: number;
  reconnects: number;
  badFrames: number;
  framesText: number;
  framesBinary: number;
  framesEncrypted: number;
  framesZlib: number;
  framesMsgpack: number;
  /** Batch keys received (encrypted fan-out sealed once per batch, opened from `G:` frames). */
  batchKeys: number;
  tokenRefreshes: number;
  queuedSends: number;
  droppedSends: number;
}

export function newStats(): ClientStats {
  return {
    received: 0, duplicates: 0, dropped: 0, gaps: 0, reconnects: 0, badFrames: 0,
    framesText: 0, framesBinary: 0, framesEncrypted: 0, framesZlib: 0, framesMsgpack: 0,
    batchKeys: 0, tokenRefreshes: 0, queuedSends: 0, droppedSends: 0,
  };
}
