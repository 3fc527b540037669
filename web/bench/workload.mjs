// The benchmark workload, shared by Node and the browser: a 1 KiB body signed with the payflow
// v1 scheme by node:crypto (or WebCrypto in the page), and a timing loop.
export const SECRET = 'whsec_bench_secret_0123456789';
export const T = 1_700_000_000;

export function body1k() {
  const base = { id: 'evt_bench', type: 'payment.succeeded', created_at: '2024-01-15T10:30:00Z', data: { amount: 2500, currency: 'PKR', note: '' } };
  const short = JSON.stringify(base);
  base.data.note = 'x'.repeat(1024 - short.length);
  const text = JSON.stringify(base);
  if (text.length !== 1024) throw new Error(`body is ${text.length} bytes`);
  return new TextEncoder().encode(text);
}

/** Runs `op` (sync or async) for about `ms` milliseconds; operations per second. */
export async function opsPerSec(op, ms = 1500) {
  for (let i = 0; i < 200; i++) await op(); // warm-up: JIT, wasm tier-up, caches
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 100; i++) await op();
    n += 100;
    now = performance.now();
  }
  return n / ((now - start) / 1000);
}

/** Median of `rounds` interleaved measurements per variant, so drift hits all alike. */
export async function compare(variants, rounds = 5) {
  const samples = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  for (let r = 0; r < rounds; r++) {
    for (const [name, op] of Object.entries(variants)) samples[name].push(await opsPerSec(op));
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, median(xs)]));
}
