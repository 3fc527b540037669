// The third-party signature vectors (verify/tests/vectors: the providers' SDKs, Node's crypto,
// Python's hmac) and the native verifier's verdict for each, shared by the Node and Chromium
// tests. Nothing here signs: the package must reproduce verdicts made elsewhere.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../..');
const vectorsDir = path.join(repo, 'verify/tests/vectors');

function run(program, args, options = {}) {
  return execFileSync(program, args, { maxBuffer: 64 << 20, encoding: 'utf8', ...options });
}

function nativeVerdicts(generated) {
  const out = run('cargo', ['run', '-q', '--release', '--locked', '-p', 'payflow-verify', '--example', 'verdicts'], {
    cwd: repo,
    input: generated,
    env: { ...process.env, CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR ?? '/var/tmp/payflow-edge-target' },
  });
  return JSON.parse(out);
}

/** Standard Webhooks' Ed25519 public keys: the package verifies them with its second module
 * (loadEd25519, or verifyAsync). */
export const publicKeyCase = (c) => c.secrets.some((s) => s.startsWith('whpk_'));

/** Every case, each with `native`: the Rust verifier's verdict. */
export function loadVectors() {
  const cases = [];
  for (const [program, script] of [['node', 'generate.mjs'], ['python3', 'generate.py']]) {
    const generated = run(program, [script], { cwd: vectorsDir });
    const native = nativeVerdicts(generated);
    for (const c of JSON.parse(generated).cases) cases.push({ ...c, native: native[c.name] });
  }
  return cases;
}
