// Runs web/bench/browser.html in headless Chromium (Debian's, via playwright-core).
import { chromium } from 'playwright-core';
import { serve } from '../serve.mjs';

const site = await serve();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  await page.goto(`${site.base}/bench/browser.html`);
  await page.waitForFunction(() => window.pageReady === true);
  console.log(JSON.stringify(await page.evaluate(() => window.runBench())));
} finally {
  await browser.close();
  site.server.close();
}
