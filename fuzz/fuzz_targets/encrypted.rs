//! The `E:` encryption (`crypto::session`): an encrypted frame's body from a client (IV,
//! ciphertext, tag) opened under the session key, and the `client_hello` public key.
//!
//! Properties:
//! - open never panics; input shorter than IV + tag is Truncated; nothing forged authenticates;
//! - decode of encode is identity: a client sealing the input under the shared key gets it
//!   opened back; the same frame again is Replayed; any one bit flipped is Rejected; a frame
//!   the server sealed, reflected at it, is refused;
//! - after a rotation, the previous key opens frames only within its grace period;
//! - a public key from the input is accepted only as a 65-byte uncompressed P-256 point.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use wse_fuzz::Rng;
use _runtime::crypto::session::{derive_next, respond, CryptoError, Session, IV_LEN, PREFIX, TAG_LEN};

const KEY: [u8; 32] = *b"fuzz-session-key-0123456789abcde";

fuzz_target!(|data: &[u8]| {
    let body = data.strip_prefix(PREFIX).unwrap_or(data);
    let mut server = Session::from_key(KEY);
    match server.open(body, 0) {
        Err(CryptoError::Truncated) => assert!(body.len() < IV_LEN + TAG_LEN),
        Err(CryptoError::Rejected) => {}
        other => panic!("a frame nobody sealed: {other:?}"),
    }

    let mut rng = Rng::from_data(data);
    let mut client = Session::from_key(KEY);
    let own = server.seal(b"{}", 0);
    let reserve = rng.below(11);
    let f = client.seal(data, reserve);
    assert_eq!(f.len(), reserve + 2 + IV_LEN + data.len() + TAG_LEN);
    assert_eq!(&f[reserve..reserve + 2], PREFIX);
    let sealed = &f[reserve + 2..];
    if sealed[..4] == own[2..6] {
        return; // the client drew the server's random nonce prefix (1 in 2^32): refused as reflected
    }
    assert_eq!(server.open(sealed, 0).as_deref(), Ok(data), "round trip");
    assert_eq!(server.open(sealed, 0), Err(CryptoError::Replayed));
    let mut t = sealed.to_vec();
    let bit = rng.below(t.len() * 8);
    t[bit / 8] ^= 1 << (bit % 8);
    assert!(server.open(&t, 0).is_err(), "a tampered frame opened");
    assert!(server.open(&own[2..], 0).is_err(), "our own frame reflected opened");

    // Rotation: the old key is good until the grace period ends.
    let late = client.seal(data, 0);
    let later = client.seal(data, 0);
    server.rotate(1_000, 500);
    assert_eq!(server.open(&late[2..], 1_500).as_deref(), Ok(data), "previous key within grace");
    assert_eq!(server.open(&later[2..], 1_501), Err(CryptoError::Rejected), "previous key after grace");
    let mut next = Session::from_key(derive_next(&KEY, 1));
    let n = next.seal(data, 0);
    assert_eq!(server.open(&n[2..], 2_000).as_deref(), Ok(data), "rotated key");

    // The client_hello key: only a valid uncompressed P-256 point.
    if rng.below(8) == 0 {
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        if respond(&b64).is_ok() {
            assert!(body.len() == 65 && body[0] == 4);
        }
        let _ = respond(&String::from_utf8_lossy(data));
    }
});
