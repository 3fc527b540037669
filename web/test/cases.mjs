// Pure helpers shared by the Node tests and the Chromium page (no Node APIs here).

const fromBase64 = (b64) => Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));

/** The package's verify() options for a generated vector case, with the body as bytes. */
export function verifyOptions(c) {
  return {
    scheme: c.scheme,
    secrets: c.secrets,
    headers: c.headers,
    body: fromBase64(c.body_b64),
    toleranceSecs: c.tolerance,
    now: c.now,
    requireTimestamp: c.require_timestamp,
    jsonCompat: c.json_compat,
    hmac: c.hmac ?? undefined,
  };
}

const encoder = new TextEncoder();
const concat = (...parts) => {
  const bytes = parts.map((p) => (typeof p === 'string' ? encoder.encode(p) : p));
  const out = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of bytes) { out.set(b, at); at += b.length; }
  return out;
};
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)));

async function mac(keyBytes, message) {
  const key = await crypto.subtle.importKey('raw', keyBytes, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return crypto.subtle.sign('HMAC', key, message);
}

/**
 * An independent verdict from WebCrypto (crypto.subtle HMAC): is the request authentic and
 * fresh? A straightforward reading of each scheme's documentation, written apart from the Rust
 * verifier: compute the expected MAC for each secret and look for it, exactly encoded, among the
 * header's signatures. It answers only ok / not ok; the reasons come from the native verifier.
 */
export async function webCryptoOk(c) {
  const o = verifyOptions(c);
  const all = (name) => o.headers.filter(([k]) => k.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
  const one = (name) => { const v = all(name); return v.length === 1 ? v[0] : null; };
  const fresh = (t) => /^\d+$/.test(t) && Math.abs(o.now - Number(t)) <= o.toleranceSecs;
  const utf8 = (s) => encoder.encode(s);
  const anyMac = async (keys, message, candidates, encode) => {
    for (const key of keys) {
      const expected = encode(await mac(key, message));
      if (candidates.includes(expected)) return true;
    }
    return false;
  };
  const secrets = o.secrets.map(utf8);
  // Stripe-style "t=…,v1=…,v1=…": exactly one t, the v1 values.
  const tv1 = (header) => {
    const pairs = header.split(',').map((p) => p.split('='));
    const ts = pairs.filter(([k]) => k === 't').map(([, v]) => v);
    return { t: ts.length === 1 ? ts[0] : null, v1: pairs.filter(([k, v]) => k === 'v1' && v).map(([, v]) => v) };
  };
  switch (o.scheme) {
    case 'payflow': {
      const header = one('X-PayFlow-Signature');
      if (header === null) return false;
      if (header.startsWith('t=')) {
        const { t, v1 } = tv1(header);
        return t !== null && fresh(t) && anyMac(secrets, concat(t, '.', o.body), v1, hex);
      }
      if (o.requireTimestamp) return false;
      const candidates = header.split(',');
      if (await anyMac(secrets, o.body, candidates, hex)) return true;
      if (!o.jsonCompat) return false;
      let canonical;
      try { canonical = JSON.stringify(JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(o.body))); } catch { return false; }
      return anyMac(secrets, utf8(canonical), candidates, hex);
    }
    case 'standard-webhooks': {
      const prefix = all('webhook-signature').length ? 'webhook' : 'svix';
      const [id, t, sigs] = [one(`${prefix}-id`), one(`${prefix}-timestamp`), one(`${prefix}-signature`)];
      if (id === null || t === null || sigs === null || !fresh(t)) return false;
      const message = concat(`${id}.${t}.`, o.body);
      const keys = o.secrets.filter((s) => !s.startsWith('whpk_'))
        .map((s) => Uint8Array.from(atob(s.replace(/^whsec_/, '')), (ch) => ch.charCodeAt(0)));
      const candidates = sigs.split(' ').filter((s) => s.startsWith('v1,')).map((s) => s.slice(3));
      if (await anyMac(keys, message, candidates, b64)) return true;
      // Ed25519 ("v1a,<base64 signature>") against each whpk_ public key, by WebCrypto.
      const publicKeys = o.secrets.filter((s) => s.startsWith('whpk_')).map((s) => fromBase64(s.slice(5)));
      const signatures = sigs.split(' ').filter((s) => s.startsWith('v1a,')).map((s) => s.slice(4));
      for (const raw of publicKeys) {
        const key = await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']);
        for (const sig of signatures) {
          let bytes;
          try { bytes = fromBase64(sig); } catch { continue; }
          if (await crypto.subtle.verify({ name: 'Ed25519' }, key, bytes, message)) return true;
        }
      }
      return false;
    }
    case 'stripe': {
      const header = one('Stripe-Signature');
      if (header === null) return false;
      const { t, v1 } = tv1(header);
      return t !== null && fresh(t) && anyMac(secrets, concat(t, '.', o.body), v1, hex);
    }
    case 'github': {
      const header = one('X-Hub-Signature-256');
      return header !== null && header.startsWith('sha256=') && anyMac(secrets, o.body, [header.slice(7)], hex);
    }
    case 'shopify': {
      const header = one('X-Shopify-Hmac-Sha256');
      return header !== null && anyMac(secrets, o.body, [header], b64);
    }
    case 'hmac': {
      const header = one(o.hmac.header);
      const prefix = o.hmac.prefix ?? '';
      return header !== null && header.startsWith(prefix)
        && anyMac(secrets, o.body, [header.slice(prefix.length)], o.hmac.encoding === 'base64' ? b64 : hex);
    }
    default:
      throw new Error(`no WebCrypto reference for scheme ${o.scheme}`);
  }
}
