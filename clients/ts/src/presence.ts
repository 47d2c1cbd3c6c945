/** Presence: the members of each topic subscribed with `presence: true`, kept from the server's events. */
import type { PresenceMember } from "./events.js";
import { asRecord } from "./util.js";

export const PRESENCE_EVENTS = new Set(["presence_state", "presence_join", "presence_leave", "presence_update"]);

export class PresenceBook {
  private members = new Map<string, Map<string, PresenceMember>>();

  /** A copy of a topic's members (user id to data). */
  of(topic: string): Map<string, PresenceMember> {
    return new Map(this.members.get(topic) ?? []);
  }

  forget(topics: string[]): void {
    for (const t of topics) this.members.delete(t);
  }

  /** Applies a presence event; returns the `presence` event's payload, or null if it named no topic. */
  apply(t: string, p: Record<string, unknown>): { topic: string; members: Record<string, PresenceMember> } | null {
    const topic = p["topic"];
    if (typeof topic !== "string") return null;
    let m = this.members.get(topic);
    if (!m) this.members.set(topic, (m = new Map()));
    const user = p["user_id"];
    if (t === "presence_state") {
      m.clear();
      for (const [u, v] of Object.entries(asRecord(p["users"]))) {
        const r = asRecord(v);
        m.set(u, { data: r["data"] ?? null, connections: typeof r["connections"] === "number" ? (r["connections"] as number) : 1 });
      }
    } else if (typeof user === "string") {
      if (t === "presence_leave") m.delete(user);
      else m.set(user, { data: p["data"] ?? null, connections: m.get(user)?.connections ?? 1 });
    }
    return { topic, members: Object.fromEntries(m) };
  }
}
