// Builds enrich.js into a payflow:plugin component with componentize-js's library API.
// Usage: node build.mjs OUT.wasm
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const out = process.argv[2] ?? 'js_enrich.wasm';
const source = await readFile(new URL('./enrich.js', import.meta.url), 'utf8');
const { component } = await componentize(source, {
  witPath: fileURLToPath(new URL('../../wit', import.meta.url)),
  worldName: 'plugin',
  // The gateway grants no network: leave out the HTTP handler and fetch.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`js-enrich: ${out} (${(component.length / 1e6).toFixed(1)} MB)`);
