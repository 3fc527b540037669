// Builds enrich.js into a payflow:plugin component with componentize-js's library API.
// Usage: node build.mjs OUT.wasm
// The WIT (payflow-edge's wit/ folder) is found at $PAYFLOW_WIT, else ./wit next to this file
// (copy it there when this folder lives outside the payflow-edge repository), else ../../wit
// (this folder inside the repository).
import { componentize } from '@bytecodealliance/componentize-js';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const out = process.argv[2] ?? 'js_enrich.wasm';
const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const candidates = [process.env.PAYFLOW_WIT, here('./wit'), here('../../wit')].filter(Boolean);
const witPath = candidates.find((dir) => existsSync(`${dir}/plugin.wit`));
if (!witPath) {
  console.error(
    `no payflow:plugin WIT found (looked in ${candidates.join(', ')}): copy payflow-edge's wit/ ` +
      'folder next to build.mjs, or set PAYFLOW_WIT to it',
  );
  process.exit(2);
}
const source = await readFile(new URL('./enrich.js', import.meta.url), 'utf8');
const { component } = await componentize(source, {
  witPath,
  worldName: 'plugin',
  // The gateway grants no network: leave out the HTTP handler and fetch.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`js-enrich: ${out} (${(component.length / 1e6).toFixed(1)} MB)`);
