// The npm package in Node: third-party vectors give the native verifier's verdicts, in every
// header and body form the API accepts; signatures it makes pass the providers' own verifiers;
// bad calls come back as values, never exceptions; the module links no bounds-check panics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import crypto from 'node:crypto';
import { verify, verifyAsync, loadEd25519, sign } from '../pkg/index.js';
import { loadVectors, publicKeyCase, repo } from './vectors.mjs';
import { verifyOptions, webCryptoOk } from './cases.mjs';

const cases = loadVectors();
const sdk = createRequire(path.join(repo, 'verify/tests/vectors/package.json'));

// First in the file: it needs the Ed25519 module not loaded yet.
test('a whpk_ key is refused until the Ed25519 module is loaded, naming how to load it', async () => {
  const c = cases.find((k) => publicKeyCase(k) && k.native === 'ok');
  assert.ok(c, 'a valid Ed25519 vector');
  const before = verify(verifyOptions(c));
  assert.equal(before.reason, 'invalid_config');
  assert.match(before.message, /whpk_.*verifyAsync\(\).*loadEd25519\(\)/);
  assert.deepEqual(await verifyAsync(verifyOptions(c)), { ok: true }, 'verifyAsync loads it');
  assert.deepEqual(verify(verifyOptions(c)), { ok: true }, 'then verify takes the key synchronously');
  await loadEd25519(); // again: loaded once, nothing more
  const refusedKey = await verifyAsync({ ...verifyOptions(c), secrets: ['whpk_not-base64!'] });
  assert.equal(refusedKey.reason, 'invalid_config', 'a bad public key names the key');
  assert.match(refusedKey.message, /whpk_/);
  assert.equal(sign({ scheme: 'standard-webhooks', secret: c.secrets.find((s) => s.startsWith('whpk_')), body: '{}', id: 'msg_1' }).reason, 'invalid_config',
    'a public key only verifies');
});

test('the vectors cover every scheme and every verdict', () => {
  assert.ok(cases.length >= 150, `only ${cases.length} cases`);
  assert.deepEqual(new Set(cases.map((c) => c.scheme)), new Set(['payflow', 'standard-webhooks', 'stripe', 'github', 'shopify', 'hmac']));
  assert.equal(new Set(cases.map((c) => c.native)).size, 5);
});

test('every vector gives the native verdict, Ed25519 ones included', async () => {
  assert.ok(cases.filter(publicKeyCase).length >= 10, 'the Ed25519 vectors are in');
  const wrong = [];
  for (const c of cases) {
    const r = await verifyAsync(verifyOptions(c));
    const got = r.ok ? 'ok' : r.reason;
    if (got !== c.native) wrong.push(`${c.name}: native ${c.native}, web ${got}${r.message ? ` (${r.message})` : ''}`);
  }
  assert.deepEqual(wrong, []);
});

test('the native verdict is also the one the spec expects', () => {
  assert.deepEqual(cases.filter((c) => c.native !== c.expect).map((c) => c.name), []);
});

test('Headers objects, plain objects, Maps and string bodies give the same verdicts', () => {
  let compared = 0;
  for (const c of cases) {
    const options = verifyOptions(c);
    const names = c.headers.map(([k]) => k.toLowerCase());
    if (new Set(names).size !== names.length) continue; // a plain object cannot hold repeats
    const expected = verify(options);
    let fetchHeaders;
    try { fetchHeaders = new Headers(c.headers); } catch { fetchHeaders = null; } // Headers refuses some garbage
    const forms = { object: Object.fromEntries(c.headers), map: new Map(c.headers) };
    if (fetchHeaders) forms.Headers = fetchHeaders;
    for (const [form, headers] of Object.entries(forms)) {
      assert.deepEqual(verify({ ...options, headers }), expected, `${c.name} with ${form}`);
      compared++;
    }
    const text = new TextDecoder().decode(options.body);
    if (new TextEncoder().encode(text).length === options.body.length && Buffer.from(text).equals(Buffer.from(options.body))) {
      assert.deepEqual(verify({ ...options, body: text }), expected, `${c.name} with a string body`);
      assert.deepEqual(verify({ ...options, body: options.body.buffer }), expected, `${c.name} with an ArrayBuffer`);
    }
  }
  assert.ok(compared > 300, `only ${compared} comparisons`);
});

test('WebCrypto (crypto.subtle) agrees on which vectors are authentic', async () => {
  const wrong = [];
  for (const c of cases) {
    const ok = verify(verifyOptions(c)).ok;
    if (ok !== (await webCryptoOk(c))) wrong.push(`${c.name}: web ok=${ok}`);
  }
  assert.deepEqual(wrong, []);
});

test('signatures made by sign() pass the providers\' own verifiers', () => {
  const body = JSON.stringify({ id: 'evt_sign', type: 'payment.succeeded', data: { amount: 2500, note: 'Café ☕' } });
  const t = Math.floor(Date.now() / 1000);

  const payflow = sign({ scheme: 'payflow', secret: 'whsec_a', body, timestamp: t });
  assert.ok(payflow.ok);
  const expected = crypto.createHmac('sha256', 'whsec_a').update(`${t}.${body}`).digest('hex');
  assert.equal(payflow.headers['X-PayFlow-Signature'], `t=${t},v1=${expected}`);
  const v0 = sign({ scheme: 'payflow', secret: 'whsec_a', body, form: 'v0' });
  assert.equal(v0.headers['X-PayFlow-Signature'], crypto.createHmac('sha256', 'whsec_a').update(body).digest('hex'));

  const swSecret = 'whsec_' + Buffer.from('standard-webhooks-key-0123456789').toString('base64');
  const sw = sign({ scheme: 'standard-webhooks', secret: swSecret, body, timestamp: t, id: 'msg_1' });
  assert.ok(sw.ok, sw.message);
  const { Webhook } = sdk('standardwebhooks');
  assert.deepEqual(new Webhook(swSecret).verify(body, sw.headers), JSON.parse(body));

  const Stripe = sdk('stripe');
  const st = sign({ scheme: 'stripe', secret: 'whsec_stripe', body, timestamp: t });
  assert.equal(new Stripe('sk_test_x').webhooks.constructEvent(body, st.headers['Stripe-Signature'], 'whsec_stripe').id, 'evt_sign');

  const gh = sign({ scheme: 'github', secret: 'gh_secret', body });
  assert.equal(gh.headers['X-Hub-Signature-256'], `sha256=${crypto.createHmac('sha256', 'gh_secret').update(body).digest('hex')}`);
  const sh = sign({ scheme: 'shopify', secret: 'sh_secret', body });
  assert.equal(sh.headers['X-Shopify-Hmac-Sha256'], crypto.createHmac('sha256', 'sh_secret').update(body).digest('base64'));
});

test('bad calls come back as values naming the problem, never as exceptions', () => {
  const body = '{}';
  const headers = { 'x-payflow-signature': 'ab' };
  const refused = [
    [undefined, 'invalid_input'],
    [null, 'invalid_input'],
    ['payflow', 'invalid_input'],
    [{ secrets: ['s'], headers, body }, 'invalid_input'],
    [{ scheme: 'paypal', secrets: ['s'], headers, body }, 'invalid_config'],
    [{ scheme: 'payflow', secrets: [], headers, body }, 'invalid_config'],
    [{ scheme: 'payflow', secrets: [''], headers, body }, 'invalid_config'],
    [{ scheme: 'payflow', secrets: 's', headers, body, jsonCompat: 'yes' }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: [42], headers, body }, 'invalid_input'],
    [{ scheme: 'payflow', headers, body }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers: 'x-payflow-signature: ab', body }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], body }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers, body: 42 }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers, body: { id: 'evt_1' } }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers: [['only-a-name']], body }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers, body, now: 'tomorrow' }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: ['s'], headers, body, toleranceSecs: -1 }, 'invalid_config'],
    [{ scheme: 'payflow', secrets: ['s'], headers, body, toleranceSecs: '300' }, 'invalid_input'],
    [{ scheme: 'stripe', secrets: ['s'], headers, body, requireTimestamp: true }, 'invalid_config'],
    [{ scheme: 'github', secrets: ['s'], headers, body, jsonCompat: true }, 'invalid_config'],
    [{ scheme: 'standard-webhooks', secrets: ['not-whsec'], headers, body }, 'invalid_config'],
    [{ scheme: 'hmac', secrets: ['s'], headers, body }, 'invalid_config'],
    [{ scheme: 'hmac', secrets: ['s'], headers, body, hmac: { header: 'X-Sig', encoding: 'base32' } }, 'invalid_config'],
  ];
  for (const [options, reason] of refused) {
    const r = verify(options);
    assert.equal(r.ok, false, JSON.stringify(options));
    assert.equal(r.reason, reason, `${JSON.stringify(options)}: ${JSON.stringify(r)}`);
    if (reason.startsWith('invalid_')) assert.match(r.message, /\w{4}/, 'a message says why');
  }
  const signRefused = [
    [{ scheme: 'standard-webhooks', secret: 'whsec_' + btoa('k'.repeat(24)), body }, 'invalid_input'], // no id
    [{ scheme: 'payflow', secret: 's', body, timestamp: -5 }, 'invalid_input'],
    [{ scheme: 'payflow', secret: 's', body, form: 'v2' }, 'invalid_input'],
    [{ scheme: 'payflow', secrets: [], body }, 'invalid_config'],
    [{ scheme: 'nope', secret: 's', body }, 'invalid_config'],
    [{ scheme: 'payflow', secret: 's', body: null }, 'invalid_input'],
    [{ scheme: 'hmac', secret: 's', body }, 'invalid_config'], // no header to sign into
  ];
  for (const [options, reason] of signRefused) {
    const r = sign(options);
    assert.equal(r.ok, false, JSON.stringify(options));
    assert.equal(r.reason, reason, `${JSON.stringify(options)}: ${JSON.stringify(r)}`);
  }
});

// Secrets are handed to the wasm module one by one before the configuration that keys them; a
// configuration it refuses must not leave them behind for the next one.
test('a refused configuration keys none of its secrets into the next', () => {
  const body = '{"id":"evt_leftover"}';
  const headers = { 'X-PayFlow-Signature': crypto.createHmac('sha256', 'left-over').update(body).digest('hex') };
  const refusals = [
    [verify, { scheme: 'paypal', headers }],
    [verify, { scheme: 'payflow', toleranceSecs: 1.5, headers }],
    [sign, { scheme: 'paypal' }],
    [sign, { scheme: 'hmac' }],
  ];
  for (const [call, refused] of refusals) {
    assert.equal(call({ ...refused, secrets: ['left-over'], body }).reason, 'invalid_config');
    assert.equal(verify({ scheme: 'payflow', secret: 'other', headers, body }).reason, 'invalid_signature');
  }
  assert.deepEqual(verify({ scheme: 'payflow', secret: 'left-over', headers, body }), { ok: true });
});

test('a secret never appears in a result', () => {
  const r = verify({ scheme: 'payflow', secrets: ['whsec_topsecret'], headers: { 'X-PayFlow-Signature': 'zz' }, body: '{}' });
  assert.ok(!JSON.stringify(r).includes('topsecret'));
});

test('many configurations in turn stay correct (the keyed-verifier cache evicts)', () => {
  const body = '{"id":"evt_cache"}';
  for (let i = 0; i < 100; i++) {
    const secret = `whsec_rotating_${i}`;
    const headers = { 'X-PayFlow-Signature': crypto.createHmac('sha256', secret).update(body).digest('hex') };
    assert.deepEqual(verify({ scheme: 'payflow', secret, headers, body }), { ok: true });
    assert.equal(verify({ scheme: 'payflow', secret: `${secret}x`, headers, body }).reason, 'invalid_signature');
  }
});

test('a secrets array changed between calls is keyed again, not taken from the last call', () => {
  const body = '{"id":"evt_memo"}';
  const mac = (secret) => crypto.createHmac('sha256', secret).update(body).digest('hex');
  const secrets = ['whsec_first'];
  const options = { scheme: 'payflow', secrets, headers: { 'X-PayFlow-Signature': mac('whsec_first') }, body };
  assert.deepEqual(verify(options), { ok: true });
  secrets[0] = 'whsec_second';
  assert.equal(verify(options).reason, 'invalid_signature');
  options.headers = { 'X-PayFlow-Signature': mac('whsec_second') };
  assert.deepEqual(verify(options), { ok: true });
  secrets.push('whsec_third');
  options.toleranceSecs = 60;
  assert.deepEqual(verify(options), { ok: true });
  options.scheme = 'github';
  assert.equal(verify(options).reason, 'missing_signature');
});

test('a secret with notAfter is accepted through that second and refused after it, as the gateway does', () => {
  const body = '{"id":"evt_rotation"}';
  const mac = (secret) => crypto.createHmac('sha256', secret).update(body).digest('hex');
  const end = Date.parse('2026-12-31T23:59:59Z') / 1000;
  for (const notAfter of ['2026-12-31T23:59:59Z', new Date(end * 1000), end]) {
    const options = {
      scheme: 'payflow', body, headers: { 'X-PayFlow-Signature': mac('whsec_old') },
      secrets: ['whsec_new', { secret: 'whsec_old', notAfter }],
    };
    assert.deepEqual(verify({ ...options, now: end }), { ok: true }, String(notAfter));
    assert.equal(verify({ ...options, now: end + 1 }).reason, 'invalid_signature', String(notAfter));
    // The new secret has no end.
    const current = { ...options, headers: { 'X-PayFlow-Signature': mac('whsec_new') }, now: end + 86400 * 365 };
    assert.deepEqual(verify(current), { ok: true });
  }
  // A changed notAfter is keyed again, not taken from the last call.
  const options = { scheme: 'payflow', body, headers: { 'X-PayFlow-Signature': mac('whsec_old') }, now: end + 1 };
  assert.equal(verify({ ...options, secrets: [{ secret: 'whsec_old', notAfter: end }] }).reason, 'invalid_signature');
  assert.deepEqual(verify({ ...options, secrets: [{ secret: 'whsec_old', notAfter: end + 1 }] }), { ok: true });
  // Unreadable ends are refused as input, naming the option.
  for (const notAfter of ['next tuesday', NaN, {}, null]) {
    const result = verify({ ...options, secrets: [{ secret: 'whsec_old', notAfter }] });
    assert.equal(result.reason, 'invalid_input', String(notAfter));
    assert.match(result.message, /notAfter/);
  }
  assert.equal(verify({ ...options, secrets: [{ notAfter: end }] }).reason, 'invalid_input');
});

// Regression guard for the module's size (issue 5): core's bounds-check and slice-copy panics
// bring their formatted messages, source paths and index helpers (~1.5 KB). The verifier and
// this crate avoid them (zips, `get`, fixed-size chunks); only alloc's out-of-memory and
// capacity paths remain, which no code here can avoid.
test('the wasm module links no bounds-check or slice panics', async () => {
  const { readFile } = await import('node:fs/promises');
  const text = (await readFile(new URL('../pkg/payflow_verify_web_bg.wasm', import.meta.url))).toString('latin1');
  const messages = ['index out of bounds', 'slice index starts at', 'range start index', 'range end index',
    'copy_from_slice', 'mid > len'].filter((message) => text.includes(message));
  const sources = text.match(/(verify|web)\/src\/[a-z_/]+\.rs/g) ?? [];
  const found = [...messages, ...sources];
  assert.deepEqual(found, [], 'a panic path is linked into the web build: find it with twiggy (see bench/RESULTS.md)');
});
