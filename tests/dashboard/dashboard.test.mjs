// The dashboard end to end: a real gateway process (the debug build `cargo test` made), a
// small fake upstream, and Debian's Chromium driven by playwright-core. An operator-less
// merchant logs in, sends a test webhook, sees it arrive and be delivered, opens it, replays
// it, uploads a plugin version and rolls it back, checks a signature in the page; a wrong token
// is refused; and one merchant's dashboard shows none of another's events or plugins.
// Screenshots of each step go to tests/dashboard/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, mkdirSync, existsSync, openSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
// playwright-core comes from web/'s packages (web/build.sh installs them).
import { launchChromium } from '../../web/test/chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const targetDir = process.env.CARGO_TARGET_DIR ?? '/var/tmp/payflow-edge-target';
const BIN = process.env.PAYFLOW_EDGE_BIN ?? join(targetDir, 'debug/payflow-edge');
const GUESTS = join(targetDir, 'guests/wasm32-wasip2/release');
const ARTIFACTS = join(here, 'artifacts');

const OPERATOR = 'operator-token-0123456789abcdef';
const ACME = 'acme-token-0123456789abcdef';
const GLOBEX = 'globex-token-0123456789abcdef';
const SECRET = 'whsec_dashboard_secret_0123456789';

let gateway;
let upstream;
let browser;
let admin;

/** A fake legacy app: records every request, answers 200. */
// A legacy app that records what it gets and answers `state.status` (200 unless a test says).
function startUpstream() {
  const received = [];
  const state = { status: 200 };
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(state.status, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, received, state, url: `http://127.0.0.1:${server.address().port}/hook` })));
}

function startGateway(config) {
  const dir = mkdtempSync(join(tmpdir(), 'payflow-dashboard-'));
  const path = join(dir, 'payflow-edge.toml');
  writeFileSync(path, config.replaceAll('@DIR@', dir));
  const log = openSync(join(ARTIFACTS, 'gateway.log'), 'w');
  const child = spawn(BIN, ['serve', '--config', path], { stdio: ['ignore', 'pipe', log] });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const found = { dir };
    lines.on('line', (line) => {
      const ingress = line.match(/^payflow-edge: ingress listening on (\S+)/);
      const adminUrl = line.match(/^payflow-edge: admin listening on (\S+)/);
      if (ingress) found.ingress = ingress[1];
      if (adminUrl) { found.admin = adminUrl[1]; resolve({ child, ...found }); }
    });
    child.on('exit', (code) => reject(new Error(`gateway exited with ${code} before listening`)));
  });
}

before(async () => {
  for (const f of [BIN, join(GUESTS, 'noop.wasm'), join(GUESTS, 'amount_threshold.wasm')]) {
    assert.ok(existsSync(f), `${f} is missing: run cargo test and scripts/build-plugins.sh first`);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  upstream = await startUpstream();
  gateway = await startGateway(`
[server]
listen = "127.0.0.1:0"
[store]
path = "@DIR@/db"
[admin]
listen = "127.0.0.1:0"
token = "${OPERATOR}"
[[merchant]]
id = "acme"
token = "${ACME}"
[[merchant]]
id = "globex"
token = "${GLOBEX}"
[[endpoint]]
merchant = "acme"
path = "/webhooks/acme"
secrets = ["${SECRET}"]
upstream = "acme-legacy"
plugins = ["acme-enrich"]
[[endpoint]]
merchant = "globex"
path = "/webhooks/globex"
secrets = ["${SECRET}"]
upstream = "globex-legacy"
plugins = ["globex-tagger"]
[[upstream]]
name = "acme-legacy"
merchant = "acme"
url = "${upstream.url}"
[[upstream]]
name = "globex-legacy"
merchant = "globex"
url = "${upstream.url}"
ordering_key = "data.customer_email"
breaker = { failures = 50, cool_down_ms = 1000 }
[[plugin]]
name = "acme-enrich"
merchant = "acme"
path = "${join(GUESTS, 'noop.wasm')}"
config = { min_amount = "1000" }
[[plugin]]
name = "globex-tagger"
merchant = "globex"
path = "${join(GUESTS, 'noop.wasm')}"
`);
  admin = gateway.admin;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (gateway) {
    const { child } = gateway;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill();
      await exited;
    }
    // Its config and database; every run used to leave one behind in the temp directory.
    rmSync(gateway.dir, { recursive: true, force: true });
  }
  upstream?.server.close();
});

/** A fresh page (its own context: its own sessionStorage) that fails the test on any page error. */
async function openDashboard() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // Refusals the tests provoke (401, 400, 404) are logged by Chromium as failed loads; the
  // tests check what the page says about them instead.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text()); });
  const requests = [];
  page.on('request', (r) => requests.push({ url: r.url(), body: r.postData() ?? '', headers: r.headers() }));
  await page.goto(`${admin}/`);
  return { page, errors, requests, context };
}

async function logIn(page, token) {
  await page.fill('#token', token);
  await page.click('#login');
}

/** A fresh page logged in with `token`, on the plugins view, with plugin `name`'s card shown. */
async function openPluginCard(token, name) {
  const opened = await openDashboard();
  await logIn(opened.page, token);
  await opened.page.waitForSelector('#events-view:visible');
  await opened.page.click('#nav a[data-view="plugins"]');
  const card = opened.page.locator(`article[data-plugin="${name}"]`);
  await card.waitFor();
  return { ...opened, card };
}

const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

async function operatorApi(method, path, body) {
  const response = await fetch(`${admin}${path}`, {
    method,
    headers: { Authorization: `Bearer ${OPERATOR}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, json: await response.json() };
}

test('a wrong token is refused and nothing is shown', async () => {
  const { page, context, errors } = await openDashboard();
  await logIn(page, 'not-a-real-token');
  await page.waitForSelector('#login-error:has-text("That token was refused.")');
  assert.equal(await page.isVisible('#events-view'), false);
  assert.equal(await page.isVisible('#nav'), false);
  await shot(page, '01-wrong-token');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a merchant sends a test webhook, sees it delivered, opens it, replays it', async () => {
  const { page, context, errors } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events-view:visible');
  assert.equal(await page.textContent('#who'), 'merchant acme');

  await page.click('#nav a[data-view="endpoints"]');
  const row = page.locator('#endpoints tr[data-endpoint="/webhooks/acme"]');
  await row.locator('select').selectOption('payment.failed');
  await row.locator('button.send-test').click();
  await page.waitForSelector('#test-result.ok');
  const result = await page.textContent('#test-result');
  assert.match(result, /^Sent evt_test_[0-9a-f]+ \(payment\.failed\) to \/webhooks\/acme: 200 /);
  const id = await page.getAttribute('#test-result', 'data-event-id');
  // The result links to the event it created, by its whole address.
  assert.equal(await page.getAttribute('#test-event-link', 'href'), `#/event/${id}/acme/${encodeURIComponent('/webhooks/acme')}`);
  await shot(page, '02-test-webhook-sent');

  // The newest page follows new events: it arrives, then is delivered, without a reload.
  await page.click('#nav a[data-view="events"]');
  const eventRow = page.locator(`#events tr[data-id="${id}"]`);
  await eventRow.waitFor();
  await page.waitForFunction((id) => document.querySelector(`#events tr[data-id="${id}"] .status`)?.textContent === 'delivered', id, { timeout: 20000 });
  assert.equal(await eventRow.locator('td').nth(2).textContent(), 'payment.failed');
  // The sample's amount, 2500 in PKR's smallest unit, in rupees.
  assert.match(await eventRow.locator('td.amount').textContent(), /PKR\s?25\.00/);
  await shot(page, '03-event-arrived');

  await eventRow.locator('a').click();
  await page.waitForSelector(`#event-title:has-text("${id}")`);
  // The link names the whole address: id, merchant and de-duplication scope.
  assert.equal(new URL(page.url()).hash, `#/event/${id}/acme/${encodeURIComponent('/webhooks/acme')}`);
  assert.equal(await page.textContent('#event-summary dd[data-fact="Scope"]'), '/webhooks/acme');
  assert.match(await page.textContent('#event-body'), new RegExp(`"id": "${id}"`));
  const run = page.locator('#event-runs tbody tr').first();
  assert.equal(await run.locator('td').nth(1).textContent(), 'acme-enrich');
  assert.equal(await run.locator('td').nth(3).textContent(), 'continue');
  const attempt = page.locator('#event-attempts tbody tr').first();
  assert.equal(await attempt.locator('td').nth(4).textContent(), '200');
  assert.match(await attempt.locator('td').nth(5).textContent(), /"ok":true/);
  await shot(page, '04-event-detail');

  const deliveredBefore = upstream.received.filter((r) => r.headers['x-payflow-event-id'] === id).length;
  assert.equal(deliveredBefore, 1);
  await page.click('#replay');
  await page.waitForSelector('#replay-result:has-text("Replayed")');
  // The replay runs the plugins again and delivers again.
  await page.waitForFunction(() => document.querySelectorAll('#event-runs tbody tr').length >= 2, null, { timeout: 20000 });
  for (let i = 0; i < 200 && upstream.received.filter((r) => r.headers['x-payflow-event-id'] === id).length < 2; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(upstream.received.filter((r) => r.headers['x-payflow-event-id'] === id).length, 2);
  await shot(page, '05-replayed');
  assert.deepEqual(errors, []);
  await context.close();
});

test('the chart shows the last hour from the server, so a reload keeps it', async () => {
  const { page, context, errors } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events-view:visible');
  const charted = () => document.getElementById('chart').dataset.received !== undefined;
  await page.waitForFunction(charted, null, { timeout: 5000 });
  const before = Number(await page.getAttribute('#chart', 'data-received'));
  const sending = (async () => {
    for (let i = 0; i < 12; i++) {
      await operatorApi('POST', '/api/test-webhook', { endpoint: '/webhooks/acme' });
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  await page.waitForFunction(() => Number(document.getElementById('rate-received').textContent) > 0, null, { timeout: 15000 });
  await page.waitForFunction(() => Number(document.getElementById('rate-delivered').textContent) > 0, null, { timeout: 15000 });
  await sending;
  await shot(page, '06-live-chart');
  // A reload draws the hour at once (from the server, not from samples this page took)…
  await page.reload();
  await page.waitForFunction((n) => Number(document.getElementById('chart').dataset.received) >= n + 12, before, { timeout: 5000 });
  assert.deepEqual(errors, []);
  await context.close();

  // Another merchant's chart does not count acme's events.
  const other = await openDashboard();
  await logIn(other.page, GLOBEX);
  await other.page.waitForFunction(charted, null, { timeout: 5000 });
  const globex = await other.page.evaluate(async (token) => {
    const r = await fetch('/api/stats/history', { headers: { authorization: `Bearer ${token}` } });
    return (await r.json()).buckets.reduce((n, b) => n + b.received, 0);
  }, GLOBEX);
  assert.ok(globex < 12, `globex's chart counts ${globex} requests`);
  assert.equal(Number(await other.page.getAttribute('#chart', 'data-received')), globex);
  assert.deepEqual(other.errors, []);
  await other.context.close();
});

test('a merchant uploads a plugin version and rolls it back', async () => {
  const { page, context, errors, card } = await openPluginCard(ACME, 'acme-enrich');
  assert.equal(await card.locator('.active-version').textContent(), '1');

  // Uploading nothing, or something that is not a component, is refused and changes nothing.
  await card.locator('button.upload').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.error:has-text("Choose a .wasm")');
  await card.locator('input[type=file]').setInputFiles({ name: 'bad.wasm', mimeType: 'application/wasm', buffer: Buffer.from('not wasm') });
  await card.locator('button.upload').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.error:has-text("400 invalid_plugin")');
  assert.equal(await card.locator('.active-version').textContent(), '1');

  await card.locator('input[type=file]').setInputFiles(join(GUESTS, 'amount_threshold.wasm'));
  await card.locator('button.upload').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("version 2 is active")');
  assert.equal(await page.locator('article[data-plugin="acme-enrich"] .active-version').textContent(), '2');
  assert.equal(await page.locator('article[data-plugin="acme-enrich"] table.versions tbody tr').count(), 2);
  await shot(page, '07-plugin-uploaded');

  await page.locator('article[data-plugin="acme-enrich"] button.rollback').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("version 1 is active")');
  assert.equal(await page.locator('article[data-plugin="acme-enrich"] .active-version').textContent(), '1');
  await shot(page, '08-plugin-rolled-back');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a merchant tries a candidate on recent events, starts it as a canary and promotes it', async () => {
  // An event the candidate (amount_threshold, min_amount 1000) would drop, where noop continues.
  const sent = await fetch(`${admin}/api/test-webhook`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ACME}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ endpoint: '/webhooks/acme', set: { 'data.amount': 500 } }),
  });
  assert.equal(sent.status, 200);
  const { id } = await sent.json();
  assert.match(id, /^evt_test_/);

  const { page, context, errors, card } = await openPluginCard(ACME, 'acme-enrich');
  await card.locator('input[type=file]').setInputFiles(join(GUESTS, 'amount_threshold.wasm'));
  await card.locator('button.try').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("Tried beside version 1")');
  const changed = card.locator(`table.trial-events tr[data-event="${id}"]`);
  assert.equal(await changed.locator('.verdict').textContent(), 'different');
  assert.match(await changed.textContent(), /action: continue → drop \(amount 500 is under min_amount 1000\)/);
  assert.equal(await card.locator('.active-version').textContent(), '1', 'a dry run changes nothing');
  await shot(page, '09-plugin-tried');

  await card.locator('input.share').fill('50');
  await card.locator('button.canary-upload').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("takes 50% of events beside version 1")');
  assert.match(await card.locator('.canary').textContent(), /^version \d+ on 50% of events$/);
  await shot(page, '10-plugin-canary');
  await card.locator('button.promote').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("is active for every event")');
  assert.match(await card.locator('.canary').textContent(), /: promoted$/);
  assert.notEqual(await card.locator('.active-version').textContent(), '1');

  // Back to version 1 for the tests that follow.
  await card.locator('button.rollback').click();
  await page.waitForSelector('article[data-plugin="acme-enrich"] .result.ok:has-text("version 1 is active")');
  assert.deepEqual(errors, []);
  await context.close();
});

test("a merchant's dashboard shows none of another merchant's events or plugins", async () => {
  // globex gets events of its own (sent by the operator).
  const sent = await operatorApi('POST', '/api/test-webhook', { endpoint: '/webhooks/globex' });
  assert.equal(sent.status, 200);
  assert.equal(sent.json.status, 200);
  const globexId = sent.json.id;

  const { page, context, errors, requests } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events tbody tr');
  const listed = await page.locator('#events tbody tr').evaluateAll((rows) => rows.map((r) => [r.dataset.id, r.children[6].textContent]));
  assert.ok(listed.length > 0);
  assert.ok(listed.every(([, merchant]) => merchant === 'acme'), JSON.stringify(listed));
  assert.ok(!listed.some(([id]) => id === globexId));
  const endpointOptions = await page.locator('#filter-endpoint option').allTextContents();
  assert.deepEqual(endpointOptions, ['any', '/webhooks/acme']);
  // Even typed in by hand, another merchant's event is simply not found.
  await page.goto(`${admin}/#/event/${globexId}`);
  await page.waitForSelector('#page-error:has-text("not this token\'s to see")');
  assert.equal(await page.isVisible('#event-view'), false);

  await page.goto(`${admin}/#/plugins`);
  await page.locator('article[data-plugin]').first().waitFor();
  assert.deepEqual(await page.locator('article[data-plugin]').evaluateAll((a) => a.map((x) => x.dataset.plugin)), ['acme-enrich']);
  await page.goto(`${admin}/#/endpoints`);
  await page.locator('#endpoints tbody tr').first().waitFor();
  assert.deepEqual(await page.locator('#endpoints tbody tr').evaluateAll((r) => r.map((x) => x.dataset.endpoint)), ['/webhooks/acme']);
  await shot(page, '09-acme-sees-only-acme');
  // Nothing the page asked for came back with globex's data.
  assert.ok(requests.every((r) => !r.url.includes('globex')));

  // The operator sees both.
  const operator = await openDashboard();
  await logIn(operator.page, OPERATOR);
  await operator.page.waitForSelector(`#events tr[data-id="${globexId}"]`);
  assert.equal(await operator.page.textContent('#who'), 'operator');
  await shot(operator.page, '10-operator-sees-all');
  await operator.context.close();
  assert.deepEqual(errors, []);
  await context.close();
});

test('the signature checker verifies in the page and never sends the secret', async (t) => {
  const { page, context, errors, requests } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events-view:visible');
  await page.click('#nav a[data-view="checker"]');
  const who = await (await fetch(`${admin}/api/whoami`, { headers: { Authorization: `Bearer ${ACME}` } })).json();
  if (!who.checker) {
    assert.equal(await page.isVisible('#checker-missing'), true);
    // scripts/test.sh builds the web package first, so there it must be built in.
    assert.ok(!process.env.PAYFLOW_EDGE_REQUIRE_CHECKER, 'the gateway was built without the web package');
    t.skip('this build has no web package (web/build.sh before cargo build embeds it)');
    return;
  }
  // Signed by Node's crypto, not by anything of ours.
  const body = JSON.stringify({ id: 'evt_checker', type: 'payment.succeeded', created_at: new Date().toISOString(), data: {} });
  const ts = Math.floor(Date.now() / 1000);
  const sig = createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex');
  await page.selectOption('#check-scheme', 'payflow');
  await page.fill('#check-secret', SECRET);
  await page.fill('#check-headers', `X-PayFlow-Signature: t=${ts},v1=${sig}\nContent-Type: application/json`);
  await page.fill('#check-body', body);
  await page.click('#check');
  await page.waitForSelector('#check-result.ok:has-text("Valid signature.")');
  await shot(page, '11-checker-valid');

  await page.fill('#check-secret', 'whsec_some_other_secret_0000');
  await page.click('#check');
  await page.waitForSelector('#check-result.error:has-text("invalid_signature")');
  await page.fill('#check-headers', 'Content-Type: application/json');
  await page.click('#check');
  await page.waitForSelector('#check-result.error:has-text("missing_signature")');
  await shot(page, '12-checker-invalid');
  for (const r of requests) {
    assert.ok(!r.url.includes(SECRET) && !r.body.includes(SECRET) && !JSON.stringify(r.headers).includes(SECRET), `secret sent to ${r.url}`);
  }
  assert.deepEqual(errors, []);
  await context.close();
});

test('the events list pages back through older events without gaps or repeats', async () => {
  for (let i = 0; i < 30; i++) {
    assert.equal((await operatorApi('POST', '/api/test-webhook', { endpoint: '/webhooks/globex', type: 'customer.created' })).status, 200);
  }
  const { page, context, errors } = await openDashboard();
  await logIn(page, GLOBEX);
  await page.waitForSelector('#events tbody tr');
  await page.selectOption('#filter-endpoint', '/webhooks/globex');
  await page.fill('#filter-type', 'customer.created');
  await page.click('#filters button[type=submit]');
  const ids = async () => page.locator('#events tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.id));
  await page.waitForFunction(() => [...document.querySelectorAll('#events tbody tr td:nth-child(3)')].every((td) => td.textContent === 'customer.created'));
  const first = await ids();
  assert.equal(first.length, 25);
  await page.click('#older');
  await page.waitForFunction((first) => !document.querySelector(`#events tr[data-id="${first}"]`), first[0]);
  const second = await ids();
  assert.equal(second.length, 5);
  assert.equal(new Set([...first, ...second]).size, 30, 'thirty distinct events over two pages');
  assert.equal(await page.isDisabled('#older'), true);
  await shot(page, '13-older-page');
  await page.click('#newest');
  await page.waitForFunction(() => document.querySelectorAll('#events tbody tr').length === 25);
  assert.deepEqual(errors, []);
  await context.close();
});

test('logging out forgets the token', async () => {
  const { page, context } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events-view:visible');
  await page.click('#logout');
  await page.waitForSelector('#login-view:visible');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.reload();
  await page.waitForSelector('#login-view:visible');
  await context.close();
});

test('on a 420 px screen the pages fit the width and wide tables scroll in their own box', async () => {
  const context = await browser.newContext({ viewport: { width: 420, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${admin}/`);
  await logIn(page, OPERATOR);
  await page.waitForSelector('#events tbody tr');
  for (const view of ['events', 'endpoints', 'plugins', 'checker']) {
    await page.click(`#nav a[data-view="${view}"]`);
    await page.waitForSelector(`#${view}-view:visible`);
    const [pageWidth, viewport] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(pageWidth <= viewport, `${view}: the page is ${pageWidth} px wide on a ${viewport} px screen`);
    await shot(page, `09-narrow-${view}`);
  }
  // The events table keeps every column (tags last), reachable by scrolling the table itself.
  await page.click('#nav a[data-view="events"]');
  const headers = await page.locator('#events thead th').allTextContents();
  assert.deepEqual(headers, ['Received', 'Event', 'Type', 'Amount', 'Status', 'Endpoint', 'Merchant', 'Tags']);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a merchant replays every dead event the filter shows, in one go', async () => {
  upstream.state.status = 400; // a permanent failure: each event is dead at its first attempt
  const ids = [];
  for (let i = 0; i < 3; i++) {
    const sent = await operatorApi('POST', '/api/test-webhook', { endpoint: '/webhooks/acme', type: 'payment.failed' });
    assert.equal(sent.json.status, 200);
    ids.push(sent.json.id);
  }
  const statusOf = async (id) => (await operatorApi('GET', `/api/events/${id}?merchant=acme`)).json.status;
  const waitFor = async (status) => {
    for (let i = 0; i < 200 && (await Promise.all(ids.map(statusOf))).some((s) => s !== status); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(await Promise.all(ids.map(statusOf)), ids.map(() => status));
  };
  await waitFor('dead');
  upstream.state.status = 200;

  const { page, context, errors } = await openDashboard();
  await logIn(page, ACME);
  await page.waitForSelector('#events-view:visible');
  assert.equal(await page.isVisible('#replay-dead'), false, 'offered only for a list of dead events');
  await page.selectOption('#filter-status', 'dead');
  await page.click('#filters button[type=submit]');
  await page.waitForSelector('#replay-dead:visible');
  await shot(page, '10-dead-events');
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.accept(); });
  await page.click('#replay-dead');
  await page.waitForSelector('#bulk-result:has-text("Replayed 3 dead events.")');
  assert.match(dialogs[0], /Replay every dead event/);
  // The list reloads: nothing dead is left, and the bulk button goes with it.
  await page.waitForSelector('#events-empty:visible');
  assert.equal(await page.isVisible('#replay-dead'), false);
  await waitFor('delivered');
  for (const id of ids) {
    assert.equal(upstream.received.filter((r) => r.headers['x-payflow-event-id'] === id).length, 2, id);
  }
  assert.deepEqual(errors, []);
  await context.close();
});

test("a merchant sees its upstream's flow control, finds the key a dead event holds, and skips it", async () => {
  upstream.state.status = 400; // the head dies at its first attempt
  const send = async () => {
    const sent = await operatorApi('POST', '/api/test-webhook', { endpoint: '/webhooks/globex', type: 'payment.failed' });
    assert.equal(sent.json.status, 200);
    return sent.json.id;
  };
  const statusOf = async (id) => (await operatorApi('GET', `/api/events/${id}?merchant=globex`)).json.status;
  const waitFor = async (id, status) => {
    for (let i = 0; i < 200 && (await statusOf(id)) !== status; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await statusOf(id), status, id);
  };
  const head = await send();
  await waitFor(head, 'dead');
  upstream.state.status = 200;
  const behind = await send(); // same customer: it waits for the dead head
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await statusOf(behind), 'queued');

  const { page, context, errors } = await openDashboard();
  await logIn(page, GLOBEX);
  await page.waitForSelector('#events-view:visible');
  await page.click('a[data-view=endpoints]');
  await page.waitForSelector('#upstreams tr[data-upstream="globex-legacy"]');
  const row = await page.textContent('#upstreams tr[data-upstream="globex-legacy"]');
  assert.match(row, /data\.customer_email/);
  assert.match(row, /closed/);
  assert.match(row, /\d+\.\d s/, 'the delivery held behind the dead head shows how far behind it is');
  assert.equal(await page.locator('#upstreams tr[data-upstream="acme-legacy"]').count(), 0, "another merchant's upstream");
  await page.waitForSelector('#held tr[data-key="customer@example.com"]');
  const held = await page.textContent('#held tr[data-key="customer@example.com"]');
  assert.match(held, new RegExp(`${head}.*dead`));
  await shot(page, '11-held-key');
  await page.click(`#held a:has-text("${head}")`);
  await page.waitForSelector('#event-view:visible');
  await page.waitForSelector('[data-fact="Ordering key"]:has-text("customer@example.com")');
  await page.click('#skip');
  await page.waitForSelector('#replay-result:has-text("Skipped")');
  await waitFor(behind, 'delivered');
  assert.equal(await statusOf(head), 'dead', 'a skipped event stays dead');
  await shot(page, '12-skipped');
  assert.deepEqual(errors, []);
  await context.close();
});
