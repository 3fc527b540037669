// The npm package in headless Chromium (Debian's, driven by playwright-core; never a downloaded
// browser): a page imports the package and checks every third-party vector, each verdict
// compared with the native one and with WebCrypto's in the same page; and the demo page
// verifies a pasted webhook without sending anything anywhere.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchChromium } from './chromium.mjs';
import { serve } from '../serve.mjs';
import { loadVectors } from './vectors.mjs';

let browser;
let site;

before(async () => {
  site = await serve();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  site?.server.close();
});

async function openPage(path) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const requests = [];
  page.on('request', (r) => requests.push({ method: r.method(), url: r.url(), body: r.postData() }));
  await page.goto(`${site.base}${path}`);
  return { page, errors, requests };
}

test('in Chromium, every vector gives the native verdict and WebCrypto agrees', async () => {
  const cases = loadVectors();
  const { page, errors } = await openPage('/test/browser/vectors.html');
  await page.waitForFunction(() => window.pageReady === true);
  const results = await page.evaluate((cs) => window.runVectors(cs), cases);
  assert.equal(results.length, cases.length);
  const wrong = [];
  results.forEach((r, i) => {
    const c = cases[i];
    if (r.web !== c.native) wrong.push(`${c.name}: native ${c.native}, browser ${r.web}`);
    if ((r.web === 'ok') !== r.webCrypto) wrong.push(`${c.name}: browser ${r.web}, WebCrypto ok=${r.webCrypto}`);
  });
  assert.deepEqual(wrong, []);
  assert.ok(results.some((r) => r.web === 'ok') && results.some((r) => r.web !== 'ok'));
  assert.deepEqual(errors, []);
  await page.close();
});

test('the demo page verifies a pasted webhook in the page, and the secret never leaves it', async () => {
  const { page, errors, requests } = await openPage('/demo/');
  await page.click('#sample');
  const secret = await page.inputValue('#secret');
  assert.match(await page.textContent('#result'), /Sample signed/);

  await page.click('#verify');
  assert.match(await page.textContent('#result'), /^Valid/);

  const body = await page.inputValue('#body');
  await page.fill('#body', body.replace('2500', '2501'));
  await page.click('#verify');
  assert.match(await page.textContent('#result'), /invalid_signature/);

  await page.fill('#body', body);
  await page.fill('#secret', 'whsec_wrong');
  await page.click('#verify');
  assert.match(await page.textContent('#result'), /invalid_signature/);

  await page.fill('#headers', 'X-PayFlow-Signature: t=1700000000,v1=nothex');
  await page.click('#verify');
  assert.match(await page.textContent('#result'), /malformed_signature/);

  // Only the page's own static files were fetched: no request carries the secret anywhere.
  for (const r of requests) {
    assert.equal(r.method, 'GET', r.url);
    assert.ok(r.url.startsWith(site.base), r.url);
    assert.ok(!r.url.includes(secret.slice(6)) && !(r.body ?? '').includes(secret.slice(6)), r.url);
  }
  assert.deepEqual(errors, []);
  await page.close();
});
