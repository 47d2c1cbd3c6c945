"""A plain echo server (no envelopes) for Autobahn|Testsuite: every message comes back unchanged."""

from wse import Connection, WSEApp, WSEConfig

app = WSEApp(
    WSEConfig(
        port=0, path="/", envelopes=False, max_message_bytes=64 << 20, max_outbound_bytes=256 << 20,
        # Sections 12 and 13. kosoku's shim of the Autobahn cases fails on an uncompressed text
        # echo (it hands the case a str to hash), so every echo goes compressed.
        permessage_deflate=True, deflate_threshold=0,
    )
)


@app.on_raw
def _echo(conn: Connection, data: bytes, is_text: bool) -> None:
    app.send_raw(conn, data, text=is_text)
