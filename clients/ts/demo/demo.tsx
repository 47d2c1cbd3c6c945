/**
 * The React demo: a live ticker (topic `prices`) and a presence list (topic `lobby`), served
 * by examples/ts_demo/app.py. The page asks that app for a token (/token) and the engine's URL.
 */
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { WSEProvider, useConnectionState, usePresence, useTopic, useWSE } from "../src/react.js";

interface Tick {
  sym: string;
  px: number;
  chg: number;
}

function Ticker() {
  const [rows, setRows] = useState<Record<string, Tick>>({});
  const [ticks, setTicks] = useState(0);
  const { subscribed } = useTopic<Tick>("prices", {
    keep: 1,
    onMessage: (ev) => {
      setTicks((n) => n + 1);
      setRows((r) => ({ ...r, [ev.payload.sym]: ev.payload }));
    },
  });
  const syms = Object.keys(rows).sort();
  return (
    <section className="card">
      <h2>Live ticker {subscribed ? "" : "(subscribing…)"}</h2>
      <table data-ticker="" data-ticks={ticks}>
        <tbody>
          {syms.map((s) => {
            const t = rows[s]!;
            return (
              <tr key={s}>
                <td className="sym">{s}</td>
                <td className="px">{t.px.toFixed(4)}</td>
                <td className={t.chg >= 0 ? "up" : "down"}>{t.chg >= 0 ? "▲" : "▼"} {Math.abs(t.chg).toFixed(4)}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <p className="muted">{ticks} updates received</p>
    </section>
  );
}

function Presence() {
  const { members, count } = usePresence("lobby");
  return (
    <section className="card">
      <h2>Here now ({count})</h2>
      <ul>
        {[...members].sort(([a], [b]) => a.localeCompare(b)).map(([id, m]) => (
          <li key={id} data-member={id}>
            {id} <span className="muted">{(m.data as { status?: string } | null)?.status ?? ""}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Header({ user }: { user: string }) {
  const state = useConnectionState();
  const c = useWSE();
  return (
    <header>
      <h1>wse-client React demo</h1>
      <span data-state="" className={`state ${state}`}>{state}</span>
      <span className="muted"> as {user}{c.encrypted ? " · end-to-end encrypted" : ""}</span>
    </header>
  );
}

async function main() {
  const q = new URLSearchParams(location.search);
  const user = q.get("user") ?? `visitor-${Math.random().toString(36).slice(2, 6)}`;
  const cfg = (await (await fetch("config.json")).json()) as { engine: string };
  const getToken = async () => (await fetch(`token?sub=${encodeURIComponent(user)}`)).text();
  const root = createRoot(document.getElementById("root")!);
  root.render(
    <StrictMode>
      <WSEProvider url={cfg.engine} options={{ getToken, tokenIn: "query", encryption: q.get("e2e") !== "0" }}>
        <Header user={user} />
        <main>
          <Ticker />
          <Presence />
        </main>
      </WSEProvider>
    </StrictMode>,
  );
}

void main();
