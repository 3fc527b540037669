// Signature test vectors made by third-party implementations only: the providers' own SDKs
// (standardwebhooks, svix, stripe, @octokit/webhooks-methods) and Node's crypto. payflow-verify
// never signs a vector. Each case carries the verdict we specify (`expect`) and, where a
// third-party verifier exists, that verifier's own verdict (`library_ok`), so the Rust test
// checks both that we follow our spec and that we agree with the provider.
//
// Usage: node generate.mjs > vectors.json   (run by verify/tests/third_party_vectors.rs)
import crypto from 'node:crypto';
import { Webhook as StandardWebhook } from 'standardwebhooks';
import { Webhook as SvixWebhook } from 'svix';
import Stripe from 'stripe';
import { sign as githubSign, verify as githubVerify } from '@octokit/webhooks-methods';

const stripe = new Stripe('sk_test_vectors_only');
const now = Math.floor(Date.now() / 1000);
const TOL = 300;
const STALE = now - TOL - 60;
const FUTURE = now + TOL + 60;

// The seed's sample event, pretty-printed, with non-ASCII text so bytes and characters differ.
const body = JSON.stringify({
  id: 'evt_1234567890',
  type: 'payment.succeeded',
  created_at: '2024-01-15T10:30:00Z',
  data: {
    id: 'pay_1234567890', amount: 2500, currency: 'PKR', status: 'completed',
    customer_email: 'customer@example.com', provider: 'payfast', provider_ref: 'PF123456789',
    note: 'Café ☕ — ok',
  },
}, null, 2);
const tampered = body.replace('2500', '9500');

const cases = [];
function add(c) {
  const { body: b = body, ...rest } = c;
  cases.push({
    tolerance: TOL, require_timestamp: false, json_compat: false, now, library_ok: null,
    ...rest, body_b64: Buffer.from(b).toString('base64'),
  });
}

const hmacHex = (key, ...parts) => { const h = crypto.createHmac('sha256', key); parts.forEach((p) => h.update(p)); return h.digest('hex'); };
const hmacB64 = (key, ...parts) => { const h = crypto.createHmac('sha256', key); parts.forEach((p) => h.update(p)); return h.digest('base64'); };
const eq = (a, b) => { const x = Buffer.from(a), y = Buffer.from(b); return x.length === y.length && crypto.timingSafeEqual(x, y); };
const garbage = ['', ' ', 'garbage', 'a'.repeat(5000), '=,=,=', 't=,v1=', 'v1', 'sha256=', '\u00ff\u00fe', 'null'];

// ---------------------------------------------------------------- payflow v0 (Node crypto)
{
  const secret = 'whsec_payflow_v0_secret';
  const other = 'whsec_payflow_other';
  const sig = hmacHex(secret, body);
  // The seed's verifyWebhookSignature, over the raw body: hex strings compared in constant time.
  const seed = (secrets, b, header) => secrets.some((s) => eq(hmacHex(s, b), header ?? ''));
  const h = (v) => [['X-PayFlow-Signature', v]];
  const v0 = (name, secrets, b, header, expect) => add({ name: `payflow-v0/${name}`, scheme: 'payflow', secrets, body: b, headers: header === undefined ? [] : h(header), expect, library_ok: seed(secrets, b, header), source: 'node:crypto createHmac' });
  v0('valid', [secret], body, sig, 'ok');
  v0('tampered_body', [secret], tampered, sig, 'invalid_signature');
  v0('wrong_secret', [other], body, sig, 'invalid_signature');
  v0('rotation_second_secret', [other, secret], body, sig, 'ok');
  v0('truncated', [secret], body, sig.slice(0, 62), 'malformed_signature');
  v0('empty', [secret], body, '', 'missing_signature');
  v0('missing_header', [secret], body, undefined, 'missing_signature');
  v0('uppercase_hex', [secret], body, sig.toUpperCase(), 'malformed_signature');
  garbage.forEach((g, i) => v0(`garbage_${i}`, [secret], body, g, g.trim() === '' ? 'missing_signature' : 'malformed_signature'));
  add({ name: 'payflow-v0/require_timestamp_refuses_v0', scheme: 'payflow', secrets: [secret], headers: h(sig), require_timestamp: true, expect: 'malformed_signature', source: 'node:crypto createHmac' });

  // json_compat: the seed's exact algorithm, HMAC over JSON.stringify(JSON.parse(body)).
  const seedSig = hmacHex(secret, JSON.stringify(JSON.parse(body)));
  const seedVerify = eq(hmacHex(secret, JSON.stringify(JSON.parse(body))), seedSig);
  add({ name: 'payflow-v0/json_compat_on_accepts_seed_algorithm', scheme: 'payflow', secrets: [secret], headers: h(seedSig), json_compat: true, expect: 'ok', library_ok: seedVerify, source: "the seed's verifyWebhookSignature" });
  add({ name: 'payflow-v0/json_compat_off_refuses_seed_algorithm', scheme: 'payflow', secrets: [secret], headers: h(seedSig), expect: 'invalid_signature', source: "the seed's verifyWebhookSignature" });
  add({ name: 'payflow-v0/json_compat_tampered', scheme: 'payflow', secrets: [secret], body: tampered, headers: h(seedSig), json_compat: true, expect: 'invalid_signature', library_ok: eq(hmacHex(secret, JSON.stringify(JSON.parse(tampered))), seedSig), source: "the seed's verifyWebhookSignature" });
}

// ------------------------------------------- standard-webhooks (standardwebhooks and svix SDKs)
for (const [lib, Webhook, prefix] of [['standardwebhooks', StandardWebhook, 'webhook'], ['svix', SvixWebhook, 'svix']]) {
  const secret = 'whsec_' + Buffer.from('standard-webhooks-key-0123456789').toString('base64');
  const other = 'whsec_' + Buffer.from('another-key-entirely-9876543210').toString('base64');
  const msgId = 'msg_2Lh9KRb0pzN4LePd3XiA4xYsbml';
  const signAt = (s, ts, b = body) => new Webhook(s).sign(msgId, new Date(ts * 1000), b);
  const headers = (sig, ts, id = msgId) => {
    const h = [];
    if (id !== null) h.push([`${prefix}-id`, id]);
    if (ts !== null) h.push([`${prefix}-timestamp`, String(ts)]);
    if (sig !== null) h.push([`${prefix}-signature`, sig]);
    return h;
  };
  const libVerify = (secrets, b, hs) => secrets.some((s) => {
    try { new Webhook(s).verify(b, Object.fromEntries(hs)); return true; } catch { return false; }
  });
  const sw = (name, secrets, b, hs, expect, extra = {}) => add({ name: `${prefix}/${name}`, scheme: 'standard-webhooks', secrets, body: b, headers: hs, expect, library_ok: libVerify(secrets, b, hs), source: `${lib} Webhook.sign`, ...extra });
  const sig = signAt(secret, now);
  sw('valid', [secret], body, headers(sig, now), 'ok');
  sw('tampered_body', [secret], tampered, headers(sig, now), 'invalid_signature');
  sw('wrong_secret', [other], body, headers(sig, now), 'invalid_signature');
  sw('rotation_second_secret', [other, secret], body, headers(sig, now), 'ok');
  sw('several_signatures_one_valid', [secret], body, headers(`${signAt(other, now)} v1a,${'A'.repeat(86)}== ${sig}`, now), 'ok');
  sw('truncated', [secret], body, headers(sig.slice(0, -3), now), 'malformed_signature');
  sw('empty_v1_comma', [secret], body, headers('v1,', now), 'malformed_signature');
  sw('only_other_versions', [secret], body, headers(sig.replace('v1,', 'v2,'), now), 'malformed_signature');
  sw('stale', [secret], body, headers(signAt(secret, STALE), STALE), 'timestamp_out_of_tolerance');
  sw('future', [secret], body, headers(signAt(secret, FUTURE), FUTURE), 'timestamp_out_of_tolerance');
  sw('swapped_timestamp', [secret], body, headers(signAt(secret, now - 10), now - 20), 'invalid_signature');
  sw('swapped_id', [secret], body, headers(sig, now, 'msg_other'), 'invalid_signature');
  sw('missing_signature_header', [secret], body, headers(null, now), 'missing_signature');
  sw('missing_id_header', [secret], body, headers(sig, now, null), 'malformed_signature');
  sw('missing_timestamp_header', [secret], body, headers(sig, null), 'malformed_signature');
  sw('timestamp_not_a_number', [secret], body, [[`${prefix}-id`, msgId], [`${prefix}-timestamp`, 'yesterday'], [`${prefix}-signature`, sig]], 'malformed_signature');
  garbage.forEach((g, i) => sw(`garbage_${i}`, [secret], body, headers(g, now), g.trim() === '' ? 'missing_signature' : 'malformed_signature'));
}

// ------------------------- standard-webhooks v1a: Ed25519 with whpk_ public keys (node:crypto)
{
  // Fixed seeds, so the vectors are the same every run: PKCS#8 for an Ed25519 seed.
  const keyFrom = (seed) => crypto.createPrivateKey({
    key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(seed.padEnd(32, '.').slice(0, 32))]),
    format: 'der', type: 'pkcs8',
  });
  const key = keyFrom('standard-webhooks-ed25519-key-1');
  const otherKey = keyFrom('another-ed25519-key-entirely-2');
  const whpk = (k) => 'whpk_' + Buffer.from(crypto.createPublicKey(k).export({ format: 'jwk' }).x, 'base64url').toString('base64');
  const secret = whpk(key);
  const other = whpk(otherKey);
  const hmacSecret = 'whsec_' + Buffer.from('standard-webhooks-key-0123456789').toString('base64');
  const msgId = 'msg_2Lh9KRb0pzN4LePd3XiA4xYsbml';
  const v1a = (k, ts, b = body, id = msgId) => 'v1a,' + crypto.sign(null, Buffer.from(`${id}.${ts}.${b}`), k).toString('base64');
  const headers = (sig, ts, id = msgId) => [['webhook-id', id], ['webhook-timestamp', String(ts)], ['webhook-signature', sig]];
  // Node's own Ed25519 verify over "{id}.{ts}.{body}", for every v1a signature and key, with
  // the spec's timestamp tolerance (as the standardwebhooks SDK applies it).
  const libVerify = (secrets, b, hs) => {
    const h = Object.fromEntries(hs);
    if (Math.abs(now - Number(h['webhook-timestamp'])) > TOL) return false;
    const signed = Buffer.from(`${h['webhook-id']}.${h['webhook-timestamp']}.${b}`);
    const sigs = h['webhook-signature'].split(' ').filter((e) => e.startsWith('v1a,')).map((e) => Buffer.from(e.slice(4), 'base64'));
    return secrets.filter((s) => s.startsWith('whpk_')).some((s) => {
      const pub = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(s.slice(5), 'base64').toString('base64url') }, format: 'jwk' });
      return sigs.some((sig) => sig.length === 64 && crypto.verify(null, signed, pub, sig));
    });
  };
  const ed = (name, secrets, b, hs, expect) => add({ name: `standard-webhooks-ed25519/${name}`, scheme: 'standard-webhooks', secrets, body: b, headers: hs, expect, library_ok: libVerify(secrets, b, hs), source: 'node:crypto sign (Ed25519)' });
  const sig = v1a(key, now);
  ed('valid', [secret], body, headers(sig, now), 'ok');
  ed('tampered_body', [secret], tampered, headers(sig, now), 'invalid_signature');
  ed('wrong_key', [other], body, headers(sig, now), 'invalid_signature');
  ed('rotation_second_key', [other, secret], body, headers(sig, now), 'ok');
  ed('several_signatures_one_valid', [secret], body, headers(`${v1a(otherKey, now)} ${sig}`, now), 'ok');
  ed('beside_an_hmac_secret', [hmacSecret, secret], body, headers(`v1,${'A'.repeat(43)}= ${sig}`, now), 'ok');
  ed('swapped_id', [secret], body, headers(sig, now, 'msg_other'), 'invalid_signature');
  ed('swapped_timestamp', [secret], body, headers(v1a(key, now - 10), now - 20), 'invalid_signature');
  ed('stale', [secret], body, headers(v1a(key, STALE), STALE), 'timestamp_out_of_tolerance');
  ed('truncated', [secret], body, headers(sig.slice(0, -4), now), 'malformed_signature');
  ed('v1a_against_hmac_secret_only', [hmacSecret], body, headers(sig, now), 'invalid_signature');
}

// ------------------------------------------------------------------------------ stripe SDK
{
  const secret = 'whsec_stripe_test_secret_0123456789';
  const other = 'whsec_stripe_other_secret';
  const gen = (s, ts, b = body) => stripe.webhooks.generateTestHeaderString({ payload: b, secret: s, timestamp: ts });
  const libVerify = (secrets, b, header) => secrets.some((s) => {
    try { stripe.webhooks.constructEvent(b, header, s, TOL); return true; } catch { return false; }
  });
  const st = (name, secrets, b, header, expect, extra = {}) => add({ name: `stripe/${name}`, scheme: 'stripe', secrets, body: b, headers: header === null ? [] : [['Stripe-Signature', header]], expect, library_ok: libVerify(secrets, b, header ?? ''), source: 'stripe.webhooks.generateTestHeaderString', ...extra });
  const header = gen(secret, now);
  const v1 = header.split('v1=')[1];
  st('valid', [secret], body, header, 'ok');
  st('tampered_body', [secret], tampered, header, 'invalid_signature');
  st('wrong_secret', [other], body, header, 'invalid_signature');
  st('rotation_second_secret', [other, secret], body, header, 'ok');
  st('several_signatures_one_valid', [secret], body, `${gen(other, now)},v1=${v1}`, 'ok');
  st('truncated', [secret], body, `t=${now},v1=${v1.slice(0, 60)}`, 'malformed_signature');
  st('empty_v1', [secret], body, `t=${now},v1=`, 'malformed_signature');
  st('downgrade_only_v0', [secret], body, `t=${now},v0=${v1}`, 'malformed_signature');
  st('downgrade_v0_valid_v1_wrong', [secret], body, `t=${now},v1=${'0'.repeat(64)},v0=${v1}`, 'invalid_signature');
  st('stale', [secret], body, gen(secret, STALE), 'timestamp_out_of_tolerance');
  // Stripe's SDK only refuses old timestamps; DESIGN requires the tolerance both ways.
  st('future', [secret], body, gen(secret, FUTURE), 'timestamp_out_of_tolerance', { library_differs: "stripe's SDK accepts future timestamps; DESIGN checks the tolerance both ways" });
  st('swapped_timestamp', [secret], body, gen(secret, now - 10).replace(`t=${now - 10}`, `t=${now - 20}`), 'invalid_signature');
  st('missing_timestamp', [secret], body, `v1=${v1}`, 'malformed_signature');
  st('two_timestamps', [secret], body, `t=${now},${header}`, 'malformed_signature', { library_differs: "stripe's SDK keeps the last t=; two timestamps are ambiguous, so we refuse them" });
  st('missing_header', [secret], body, null, 'missing_signature');
  garbage.forEach((g, i) => st(`garbage_${i}`, [secret], body, g, g.trim() === '' ? 'missing_signature' : 'malformed_signature'));
}

// --------------------------------------------------------------- github (@octokit/webhooks-methods)
{
  const secret = 'github-webhook-secret';
  const other = 'another-github-secret';
  const libVerify = async (secrets, b, header) => {
    for (const s of secrets) { try { if (await githubVerify(s, b, header)) return true; } catch { /* refused */ } }
    return false;
  };
  const gh = async (name, secrets, b, header, expect) => add({ name: `github/${name}`, scheme: 'github', secrets, body: b, headers: header === null ? [] : [['X-Hub-Signature-256', header]], expect, library_ok: await libVerify(secrets, b, header ?? ''), source: '@octokit/webhooks-methods sign' });
  const sig = await githubSign(secret, body);
  await gh('valid', [secret], body, sig, 'ok');
  await gh('tampered_body', [secret], tampered, sig, 'invalid_signature');
  await gh('wrong_secret', [other], body, sig, 'invalid_signature');
  await gh('rotation_second_secret', [other, secret], body, sig, 'ok');
  await gh('truncated', [secret], body, sig.slice(0, -1), 'malformed_signature');
  await gh('empty', [secret], body, 'sha256=', 'malformed_signature');
  await gh('no_prefix', [secret], body, sig.slice('sha256='.length), 'malformed_signature');
  await gh('sha1_prefix', [secret], body, sig.replace('sha256=', 'sha1='), 'malformed_signature');
  await gh('missing_header', [secret], body, null, 'missing_signature');
  for (const [i, g] of garbage.entries()) await gh(`garbage_${i}`, [secret], body, g, g.trim() === '' ? 'missing_signature' : 'malformed_signature');
}

// ---------------------------------------------------------------------- shopify (Node crypto)
{
  const secret = 'shopify-app-secret';
  const other = 'shopify-other-secret';
  const libVerify = (secrets, b, header) => secrets.some((s) => eq(hmacB64(s, b), header ?? ''));
  const sh = (name, secrets, b, header, expect) => add({ name: `shopify/${name}`, scheme: 'shopify', secrets, body: b, headers: header === null ? [] : [['X-Shopify-Hmac-Sha256', header]], expect, library_ok: libVerify(secrets, b, header), source: 'node:crypto createHmac base64' });
  const sig = hmacB64(secret, body);
  sh('valid', [secret], body, sig, 'ok');
  sh('tampered_body', [secret], tampered, sig, 'invalid_signature');
  sh('wrong_secret', [other], body, sig, 'invalid_signature');
  sh('rotation_second_secret', [other, secret], body, sig, 'ok');
  sh('truncated', [secret], body, sig.slice(0, -4), 'malformed_signature');
  sh('unpadded', [secret], body, sig.replace(/=+$/, ''), 'malformed_signature');
  sh('hex_instead_of_base64', [secret], body, hmacHex(secret, body), 'malformed_signature');
  sh('missing_header', [secret], body, null, 'missing_signature');
  garbage.forEach((g, i) => sh(`garbage_${i}`, [secret], body, g, g.trim() === '' ? 'missing_signature' : 'malformed_signature'));
}

process.stdout.write(JSON.stringify({ generator: 'generate.mjs', now, cases }, null, 1));
