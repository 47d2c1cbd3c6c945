// @vitest-environment jsdom
import { StrictMode, version } from "react";
import { act, render, screen, cleanup } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { WSEProvider, useConnectionState, usePresence, useTopic, useWSE, LEAVE_DELAY_MS } from "../src/react.js";
import { WSEClient } from "../src/client.js";
import { FakeWS, flush } from "./fakews.js";

function Ticker({ topic }: { topic: string }) {
  const { last, messages, subscribed } = useTopic<{ px: number }>(topic, { keep: 3 });
  return (
    <div data-testid={`t-${topic}`}>
      {subscribed ? "on" : "off"}:{last?.payload.px ?? "-"}:{messages.length}
    </div>
  );
}

function Who() {
  const { members, count } = usePresence("room");
  return <div data-testid="who">{count}:{[...members.keys()].sort().join(",")}</div>;
}

function State() {
  const s = useConnectionState();
  const c = useWSE();
  return <div data-testid="state">{s}:{c.subscriptions.join(",")}</div>;
}

const text = (id: string) => screen.getByTestId(id).textContent;

async function serve(): Promise<FakeWS> {
  await act(async () => {
    await flush();
  });
  const ws = FakeWS.last;
  await act(async () => {
    ws.accept();
    await flush();
    ws.hello();
    await flush();
  });
  return ws;
}

function ackAll(ws: FakeWS, presence = false): void {
  for (const m of ws.ofType("subscription_update").filter((m) => !m.acked && m.p.action === "subscribe")) {
    m.acked = true;
    const topics: string[] = m.p.topics;
    ws.push({ c: "WSE", t: "subscription_update", p: { action: "subscribe", success: true, success_topics: topics, failed_topics: [], errors: {}, topics, recovery: {} } });
    if (presence && m.p.presence) {
      ws.push({ c: "WSE", t: "presence_state", p: { topic: "room", users: { ann: { data: null, connections: 1 } }, count: { users: 1, connections: 1 } } });
    }
  }
}

beforeEach(() => {
  FakeWS.all = [];
});
afterEach(() => cleanup());

describe(`React ${version} hooks`, () => {
  it("runs under the React version this run expects", () => {
    // npm run test:react18 sets 18: the aliases must have put React 18 under the hooks.
    const want = process.env["WSE_EXPECT_REACT"];
    if (want) expect(version.split(".")[0]).toBe(want);
  });

  it("StrictMode: one client, one wire subscription for many components, live updates", async () => {
    render(
      <StrictMode>
        <WSEProvider url="ws://h/wse" options={{ WebSocket: FakeWS as any }}>
          <State />
          <Ticker topic="px" />
          <Ticker topic="px" />
        </WSEProvider>
      </StrictMode>,
    );
    const ws = await serve();
    expect(FakeWS.all).toHaveLength(1);
    expect(text("state")).toMatch(/^open/);
    const subs = ws.ofType("subscription_update");
    expect(subs).toHaveLength(1);
    expect(subs[0]!.p.topics).toEqual(["px"]);
    await act(async () => {
      ackAll(ws);
      await flush();
    });
    await act(async () => {
      for (let i = 1; i <= 5; i++) ws.push({ c: "U", t: "tick", tp: "px", p: { px: i } });
    });
    for (const el of screen.getAllByTestId("t-px")) expect(el.textContent).toBe("on:5:3");
  });

  it("leaves the topic when the last component unmounts, not before; presence members", async () => {
    const client = new WSEClient("ws://h/wse", { WebSocket: FakeWS as any });
    const p = client.connect();
    const view = (a: boolean, b: boolean) => (
      <WSEProvider client={client}>
        {a && <Ticker topic="px" />}
        {b && <Ticker topic="px" />}
        <Who />
      </WSEProvider>
    );
    const r = render(view(true, true));
    await serve();
    await p;
    const ws = FakeWS.last;
    await act(async () => {
      await flush();
      ackAll(ws, true);
      await flush();
    });
    expect(text("who")).toBe("1:ann");
    await act(async () => {
      ws.push({ c: "WSE", t: "presence_join", p: { topic: "room", user_id: "bob", data: { s: 1 } } });
    });
    expect(text("who")).toBe("2:ann,bob");
    await act(async () => {
      ws.push({ c: "WSE", t: "presence_leave", p: { topic: "room", user_id: "ann", data: null } });
    });
    expect(text("who")).toBe("1:bob");
    r.rerender(view(true, false));
    await act(async () => {
      await new Promise((res) => setTimeout(res, LEAVE_DELAY_MS * 2));
    });
    expect(ws.sent.filter((m) => m.t === "subscription_update" && m.p.action === "unsubscribe")).toHaveLength(0);
    r.rerender(view(false, false));
    await act(async () => {
      await new Promise((res) => setTimeout(res, LEAVE_DELAY_MS * 2));
    });
    const leaves = ws.sent.filter((m) => m.t === "subscription_update" && m.p.action === "unsubscribe");
    expect(leaves.map((m) => m.p.topics)).toEqual([["px"]]);
    client.close();
  });
});
