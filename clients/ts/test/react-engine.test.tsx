// @vitest-environment jsdom
/**
 * The React hooks against the real engine (started by tests/ts/test_ts_react.py, which passes
 * WSE_TEST_URL and two tokens). Runs under React 19 (`vitest run`) and React 18
 * (`npm run test:react18`); without WSE_TEST_URL (plain `npm test`) it is skipped.
 */
import { StrictMode, version } from "react";
import { render, screen, cleanup, waitFor } from "@testing-library/react";
import WebSocket from "ws";
import { afterEach, describe, expect, it } from "vitest";
import { WSEProvider, useConnectionState, usePresence, useTopic, useWSE } from "../src/react.js";
import { WSEClient } from "../src/client.js";
import type { WebSocketCtor } from "../src/options.js";

const url = process.env["WSE_TEST_URL"];
const WS = WebSocket as unknown as WebSocketCtor;
const opts = (token: string | undefined) => ({ token, tokenIn: "query" as const, WebSocket: WS });
const deadline = { timeout: 30_000, interval: 20 };

function Ticker({ topic }: { topic: string }) {
  const { last, messages, subscribed } = useTopic<{ i: number }>(topic, { keep: 5 });
  return (
    <div data-testid="ticker">
      {subscribed ? "on" : "off"}:{last?.payload.i ?? "-"}:{messages.map((m) => m.payload.i).join(",")}
    </div>
  );
}

function Who({ topic }: { topic: string }) {
  const { members, count } = usePresence(topic);
  return <div data-testid="who">{count}:{[...members.keys()].sort().join(",")}</div>;
}

let seen: WSEClient | null = null;

function State() {
  seen = useWSE();
  return <div data-testid="state">{useConnectionState()}</div>;
}

const text = (id: string) => screen.getByTestId(id).textContent;

afterEach(() => cleanup());

describe.skipIf(!url)(`React ${version} hooks against the engine`, () => {
  it("runs under the React version this run expects", () => {
    const want = process.env["WSE_EXPECT_REACT"];
    if (want) expect(version.split(".")[0]).toBe(want);
  });

  it("StrictMode: live publications, presence of another client, leaving on unmount", async () => {
    const topic = `react-${version}-${Date.now()}`;
    const room = `room-${version}-${Date.now()}`;
    const view = render(
      <StrictMode>
        <WSEProvider url={url!} options={opts(process.env["WSE_TEST_TOKEN_A"])}>
          <State />
          <Ticker topic={topic} />
          <Ticker topic={topic} />
          <Who topic={room} />
        </WSEProvider>
      </StrictMode>,
    );
    await waitFor(() => expect(text("state")).toBe("open"), deadline);
    await waitFor(() => {
      for (const el of screen.getAllByTestId("ticker")) expect(el.textContent).toBe("on:-:");
    }, deadline);
    await waitFor(() => expect(text("who")).toBe("1:react-a"), deadline);
    // StrictMode mounted everything twice: still one client, holding each topic once.
    expect(seen!.subscriptions.sort()).toEqual([room, topic].sort());

    // Another client (not React) publishes through the app and joins the room.
    const other = await new WSEClient(url!, opts(process.env["WSE_TEST_TOKEN_B"])).connect();
    try {
      other.send("publish", { topic, count: 20 });
      await waitFor(() => {
        for (const el of screen.getAllByTestId("ticker")) expect(el.textContent).toBe("on:19:15,16,17,18,19");
      }, deadline);
      await other.subscribe(room, { presence: true });
      await waitFor(() => expect(text("who")).toBe("2:react-a,react-b"), deadline);

      // The provider closes its client on unmount: the other client sees react-a leave.
      view.unmount();
      await waitFor(() => expect([...other.presence(room).keys()]).toEqual(["react-b"]), deadline);
    } finally {
      other.close();
    }
  }, 120_000);
});
