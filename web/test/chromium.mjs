// Debian's headless Chromium through playwright-core (never a downloaded browser), started the
// same way by every browser test in the repository: the web package's and the dashboard's.
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

// Debian's Chromium has been seen to die while starting on these shared VMs (SIGSEGV, with
// crashpad's "memory_map.cc: retry count exceeded"), once in many runs. That is the browser's
// start-up, not anything a test checks, so starting it is tried up to three times; whatever
// happens after it started still fails the test at once.
const LAUNCH_ATTEMPTS = 3;

export async function launchChromium() {
  for (let attempt = 1; ; attempt++) {
    try {
      return await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
      });
    } catch (error) {
      if (attempt === LAUNCH_ATTEMPTS) throw error;
      console.error(`chromium did not start (attempt ${attempt} of ${LAUNCH_ATTEMPTS}): ${String(error.message).split('\n')[0]}`);
    }
  }
}
