/**
 * Topics and recovery: what the client subscribed to, the last (epoch, offset) seen per topic,
 * the subscribe/unsubscribe exchange and its ack, duplicates dropped by offset, gaps reported,
 * and the resubscription with recovery after a reconnect.
 */
import type { ClientStats, Envelope, Gap, SubscribeResult, TopicRecovery } from "./events.js";
import type { Link } from "./link.js";
import { asRecord, deferred, withTimeout, type Pending } from "./util.js";

interface SubWaiter extends Pending<SubscribeResult> {
  action: string;
  topics: Set<string>;
}

export type Position = { epoch: string | null; offset: number | null };

/** What the subscriptions need from their client. */
export interface SubscriptionsOwner {
  readonly stats: ClientStats;
  readonly options: { requestTimeout: number };
  transmit(link: Link, env: Envelope): void;
  /** A gap to report (an event to handlers and the stream, past the queue's bound). */
  gap(g: Gap): void;
}

export class Subscriptions {
  /** Accepted topics, restored after every reconnect. */
  readonly topics = new Map<string, { presence: boolean }>();
  /** The last (epoch, offset) seen per topic. */
  readonly positions = new Map<string, Position>();
  /** Positions from an ack, not from a publication: the next publication is taken as it is. */
  private soft = new Set<string>();
  /** Topics being recovered: offsets jump while the replay arrives. */
  private recovering = new Set<string>();
  private waiters: SubWaiter[] = [];

  constructor(private readonly owner: SubscriptionsOwner) {}

  /** Records what the server accepted (with its recovery positions). */
  accepted(r: SubscribeResult, presence: boolean): void {
    for (const t of r.successTopics) {
      const prev = this.topics.get(t);
      this.topics.set(t, { presence: presence || !!prev?.presence });
      this.positionFromAck(t, r.recovery[t]);
    }
  }

  /** Forgets topics (before leaving them). */
  forget(names: string[]): void {
    for (const t of names) {
      this.topics.delete(t);
      this.positions.delete(t);
      this.soft.delete(t);
    }
  }

  /** Sends a subscribe (with the recovery positions known) or unsubscribe; resolves with the ack. */
  async request(link: Link, action: string, topics: string[], recover: boolean, presence: boolean, timeout?: number): Promise<SubscribeResult> {
    const p: Record<string, unknown> = { action, topics };
    const asked: string[] = [];
    if (recover && action === "subscribe") {
      const positions: Record<string, { epoch: string; offset: number }> = {};
      for (const t of topics) {
        const pos = this.positions.get(t);
        if (pos && pos.epoch !== null && pos.offset !== null) {
          positions[t] = { epoch: pos.epoch, offset: pos.offset };
          asked.push(t);
        }
      }
      if (asked.length) {
        p["recover"] = true;
        p["recovery"] = positions;
        for (const t of asked) this.recovering.add(t);
      }
    }
    if (presence && action === "subscribe") p["presence"] = true;
    const d = deferred<SubscribeResult>();
    const waiter: SubWaiter = { action, topics: new Set(topics), resolve: d.resolve, reject: d.reject };
    this.waiters.push(waiter);
    try {
      this.owner.transmit(link, { c: "WSE", t: "subscription_update", p });
      return await withTimeout(d.promise, timeout ?? this.owner.options.requestTimeout, action);
    } finally {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
      for (const t of topics) this.recovering.delete(t);
    }
  }

  /** The server's `subscription_update`: resolves the request it answers. */
  onAck(p: Record<string, unknown>, msg: Envelope): void {
    const recovery: Record<string, TopicRecovery> = {};
    const rr = asRecord(p["recovery"]);
    const per = "topics" in rr && typeof rr["topics"] === "object" ? asRecord(rr["topics"]) : rr;
    for (const [topic, v] of Object.entries(per)) {
      const r = asRecord(v);
      if (!Object.keys(r).length) continue;
      recovery[topic] = {
        topic,
        recovered: !!r["recovered"],
        epoch: typeof r["epoch"] === "string" ? (r["epoch"] as string) : null,
        offset: typeof r["offset"] === "number" ? (r["offset"] as number) : null,
        count: Number(r["count"] ?? 0),
      };
    }
    const failed = Array.isArray(p["failed_topics"]) ? (p["failed_topics"] as string[]) : [];
    const result: SubscribeResult = {
      ok: failed.length === 0,
      successTopics: Array.isArray(p["success_topics"]) ? (p["success_topics"] as string[]) : [],
      failedTopics: failed,
      errors: asRecord(p["errors"]) as Record<string, string>,
      recovery,
      raw: msg,
    };
    const action = p["action"];
    const answered = new Set([...result.successTopics, ...result.failedTopics]);
    const candidates = this.waiters.filter((w) => action === undefined || w.action === action);
    const same = (a: Set<string>, b: Set<string>) => a.size === b.size && [...a].every((x) => b.has(x));
    const entry = candidates.find((w) => same(w.topics, answered)) ?? candidates[0];
    if (!entry) return;
    this.waiters.splice(this.waiters.indexOf(entry), 1);
    entry.resolve(result);
  }

  /** Requests waiting for an ack fail (the connection is gone). */
  fail(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  /** A publication at (epoch, offset): false for a duplicate; reports a jump as a gap. */
  fresh(topic: string, epoch: string | null, offset: number): boolean {
    const pos = this.positions.get(topic);
    if (!pos) {
      this.positions.set(topic, { epoch, offset });
      return true;
    }
    if (this.soft.has(topic)) {
      this.soft.delete(topic);
    } else if (pos.epoch === epoch && pos.offset !== null) {
      const last = pos.offset;
      if (offset <= last) {
        this.owner.stats.duplicates++;
        return false;
      }
      if (offset > last + 1 && !this.recovering.has(topic)) {
        this.owner.gap({ topic, epoch, offset: last, reason: "missed", server_epoch: epoch, server_offset: offset - 1 });
      }
    }
    pos.epoch = epoch;
    pos.offset = offset;
    return true;
  }

  private positionFromAck(topic: string, rec: TopicRecovery | undefined): void {
    if (!rec || rec.epoch === null || rec.offset === null) return;
    const pos = this.positions.get(topic);
    if (!pos || pos.offset === null || pos.epoch !== rec.epoch) {
      this.positions.set(topic, { epoch: rec.epoch, offset: rec.offset });
      this.soft.add(topic);
    }
  }

  /** After a reconnect: subscribe again with recovery, report what could not be recovered. */
  async restore(link: Link): Promise<void> {
    const topics = [...this.topics.keys()];
    const before = new Map([...this.positions].map(([t, p]) => [t, { ...p }]));
    const withPresence = topics.filter((t) => this.topics.get(t)?.presence);
    const plain = topics.filter((t) => !this.topics.get(t)?.presence);
    const results: SubscribeResult[] = [];
    if (plain.length) results.push(await this.request(link, "subscribe", plain, true, false));
    if (withPresence.length) results.push(await this.request(link, "subscribe", withPresence, true, true));
    for (const result of results) {
      for (const t of [...result.successTopics, ...result.failedTopics]) {
        if (result.failedTopics.includes(t)) {
          this.topics.delete(t);
          continue;
        }
        const pos = before.get(t);
        const rec = result.recovery[t];
        if (!pos || pos.offset === null || !rec) {
          this.owner.gap({ topic: t, epoch: pos?.epoch ?? null, offset: pos?.offset ?? null, reason: "no_recovery", server_epoch: null, server_offset: null });
        } else if (!rec.recovered) {
          this.owner.gap({ topic: t, epoch: pos.epoch, offset: pos.offset, reason: "not_recovered", server_epoch: rec.epoch, server_offset: rec.offset });
          const cur = this.positions.get(t);
          if (cur && cur.epoch === pos.epoch && cur.offset === pos.offset) this.positions.set(t, { epoch: rec.epoch, offset: null });
        }
        this.positionFromAck(t, rec);
      }
    }
  }
}
