"""A chat room: clients subscribe to topics and publish to them through a handler.

Run it with ``wse run examples.chat:app`` and connect to ws://127.0.0.1:5006/wse.
"""

from wse import Connection, Message, WSEApp, WSEConfig

app = WSEApp(WSEConfig(port=5006))


@app.on_connect
def joined(conn: Connection) -> None:
    app.subscribe(conn, "lobby")
    app.publish("lobby", {"who": conn.user_id or f"guest-{conn.id}", "event": "joined"}, type="presence")


@app.on("chat.send")
def chat_send(conn: Connection, msg: Message) -> None:
    room = msg.payload.get("room", "lobby")
    app.publish(room, {"from": conn.user_id or f"guest-{conn.id}", "text": msg.payload.get("text", "")}, type="chat.message")


@app.on("echo")
async def echo(conn: Connection, msg: Message) -> None:
    app.send(conn, msg.payload, type="echo")


@app.on_disconnect
def left(conn: Connection, code: int) -> None:
    app.publish("lobby", {"who": conn.user_id or f"guest-{conn.id}", "event": "left", "code": code}, type="presence")
