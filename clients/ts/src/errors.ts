/** Every error this package throws is a WSEError (or a subclass). */
export class WSEError extends Error {
  override name = "WSEError";
}

/** The server refused the token (close 4401), and no fresh token could be had. */
export class AuthError extends WSEError {
  override name = "AuthError";
  constructor(message: string, readonly code?: string, readonly reason?: string) {
    super(message);
  }
}

/** The connection is gone for good: closed by `close()`, or reconnecting gave up. */
export class ConnectionLost extends WSEError {
  override name = "ConnectionLost";
}

/** A key exchange that failed, or an encrypted frame that would not open. */
export class EncryptionError extends WSEError {
  override name = "EncryptionError";
}

/** A request answered with an `error` envelope. */
export class RequestError extends WSEError {
  override name = "RequestError";
  constructor(readonly code: string, message: string, readonly payload?: unknown) {
    super(`${code}: ${message}`);
  }
}

/** A request, subscribe or refresh that got no answer in time. */
export class TimeoutError extends WSEError {
  override name = "TimeoutError";
}

/** The offline send queue is full and its policy is `reject`. */
export class QueueFull extends WSEError {
  override name = "QueueFull";
}

/** A frame that could not be decoded. */
export class FrameError extends WSEError {
  override name = "FrameError";
}
