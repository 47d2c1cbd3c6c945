"""The app ``wse run`` serves when given none: echo, and a chat room on topic ``lobby``.

No token is needed (JWT is off by default); try it with any WebSocket client on
``ws://127.0.0.1:5006/wse``: send ``{"t": "echo", "p": {...}}`` or
``{"t": "chat", "p": {"text": "hi"}}``.
"""

from .app import Connection, Message, WSEApp

app = WSEApp()


@app.on_connect
def _joined(conn: Connection) -> None:
    app.subscribe(conn, "lobby")


@app.on("echo")
def _echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")


@app.on("chat")
def _chat(conn: Connection, msg: Message) -> None:
    app.publish("lobby", {"from": conn.user_id or f"guest-{conn.id}", "p": msg.payload}, type="chat")
