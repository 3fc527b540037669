/** Signature schemes, by their payflow-edge config names. */
export type Scheme = 'payflow' | 'standard-webhooks' | 'stripe' | 'github' | 'shopify' | 'hmac';

/** Why a webhook failed verification (the same names the gateway answers with). */
export type VerifyReason =
  | 'missing_signature'
  | 'malformed_signature'
  | 'invalid_signature'
  | 'timestamp_out_of_tolerance';

/** Why a call could not be made at all: a configuration or an argument is unusable. */
export type CallReason = 'invalid_config' | 'invalid_input' | 'internal_error';

/**
 * Request headers: a fetch `Headers` object, a plain object (Node's `req.headers`, whose
 * values may be arrays), a `Map`, or `[name, value]` pairs. Names match case-insensitively.
 */
export type HeadersLike =
  | Headers
  | Record<string, string | string[] | undefined>
  | Map<string, string>
  | Array<[string, string]>;

/** The raw request body, exactly as received. Strings are encoded as UTF-8. */
export type Body = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** Where the generic `hmac` scheme finds its signature. */
export interface HmacOptions {
  /** Header name, e.g. `X-Signature`. */
  header: string;
  /** Text before the signature in the header, e.g. `sha256=`. Default: none. */
  prefix?: string;
  /** `hex` (lowercase) or `base64`. Default: `hex`. */
  encoding?: 'hex' | 'base64';
}

/** A secret accepted until `notAfter` (inclusive, to the second). */
export interface SecretWithEnd {
  secret: string;
  /** A Date, unix seconds, or RFC 3339 text such as `2026-12-31T23:59:59Z`. */
  notAfter?: Date | number | string;
}

interface KeyOptions {
  scheme: Scheme;
  /**
   * One secret, or several during a rotation (any one matching passes). A secret may carry
   * `notAfter`, the last moment it is accepted (a rotated-out secret stops passing then).
   */
  secrets?: string | Array<string | SecretWithEnd>;
  /** Shorthand for a single secret. */
  secret?: string;
  /** Required for `scheme: 'hmac'`. */
  hmac?: HmacOptions;
}

export interface VerifyOptions extends KeyOptions {
  headers: HeadersLike;
  body: Body;
  /** Accepted clock skew for timestamped schemes, both ways. Default 300. */
  toleranceSecs?: number;
  /** The current time (unix seconds or a Date). Default: the clock. */
  now?: number | Date;
  /** `payflow` only: refuse the untimestamped v0 form. */
  requireTimestamp?: boolean;
  /** `payflow` only: also accept the seed's HMAC over `JSON.stringify(JSON.parse(body))`. */
  jsonCompat?: boolean;
}

export type VerifyResult =
  | { ok: true }
  | { ok: false; reason: VerifyReason | CallReason; message?: string };

export interface SignOptions extends KeyOptions {
  body: Body;
  /** Unix seconds (or a Date) to sign with. Default: the clock. */
  timestamp?: number | Date;
  /** Message id; required by `standard-webhooks` (becomes `webhook-id`). */
  id?: string;
  /** `payflow` only: `v1` (timestamped, default) or `v0` (the seed's raw-body form). */
  form?: 'v0' | 'v1';
}

export type SignResult =
  | { ok: true; headers: Record<string, string> }
  | { ok: false; reason: CallReason; message: string };

/** Verifies a webhook's signature over its raw body. Never throws. */
export function verify(options: VerifyOptions): VerifyResult;

/** verify(), first loading the Ed25519 module when a secret is a `whpk_` public key. */
export function verifyAsync(options: VerifyOptions): Promise<VerifyResult>;

/** Loads the module that also verifies Ed25519 public keys (`whpk_`), once; afterwards
 * verify() takes them synchronously. */
export function loadEd25519(): Promise<void>;

/** The headers a sender would attach to `body`. Never throws. */
export function sign(options: SignOptions): SignResult;

/** Resolves when the WebAssembly module is ready (importing the package already waits). */
export const ready: Promise<unknown>;
