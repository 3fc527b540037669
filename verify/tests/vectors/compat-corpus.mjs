// A corpus for `json_compat`: random JSON texts written the many ways JSON allows, plus curated
// hard cases, each with what Node itself computes for the seed's signing input,
// JSON.stringify(JSON.parse(body)), and the seed's HMAC over it. Bodies are decoded as
// express.json() does (UTF-8, U+FFFD for invalid bytes, leading BOM dropped).
//
// Usage: node compat-corpus.mjs [seed] [count]   (run by verify/tests/json_compat_corpus.rs)
import crypto from 'node:crypto';

const seed = Number(process.argv[2] ?? Date.now() % 2147483647) >>> 0;
const count = Number(process.argv[3] ?? 3000);
const SECRET = 'whsec_seed_compat';

let state = seed || 1; // xorshift32: reproducible from the printed seed
const rnd = () => { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state / 4294967296; };
const int = (n) => Math.floor(rnd() * n);
const pick = (xs) => xs[int(xs.length)];

const ws = () => (rnd() < 0.7 ? '' : pick([' ', '\n', '\t', '\r\n', '  ']));
const hex4 = (n) => n.toString(16).padStart(4, '0');

function number() {
  switch (int(12)) {
    case 0: return String(int(1000) - 500);
    case 1: return pick(['-0', '0', '0.0', '-0.0', '0e0', '-0E-0']);
    case 2: return (rnd() < 0.5 ? '-' : '') + String(1 + int(9)) + Array.from({ length: 15 + int(15) }, () => int(10)).join(''); // beyond 2^53
    case 3: return `${int(10)}.${Array.from({ length: 1 + int(20) }, () => int(10)).join('')}`;
    case 4: return `${1 + int(9)}${pick(['e', 'E'])}${pick(['', '+', '-'])}${int(400)}`; // includes 1e400 → null
    case 5: return String((rnd() - 0.5) * 10 ** (int(60) - 30));
    case 6: return ((rnd() - 0.5) * 1e6).toExponential(int(15));
    case 7: return pick(['1e21', '1e20', '123456789012345678901', '0.000001', '0.0000001', '1e-7', '5e-324', '2e-324', '1.7976931348623157e308', '1.7976931348623159e308', '9007199254740993', '0.1', '0.30000000000000004', '100', '1.0', '1.50']);
    case 8: return String(rnd() * 1e-5);
    case 9: return `${int(100)}.${'0'.repeat(int(5))}${1 + int(9)}e-${int(30)}`;
    case 10: return String(Number.MAX_SAFE_INTEGER + int(1000));
    default: return String(rnd() * 100000);
  }
}

function stringBody() {
  let s = '';
  const n = int(12);
  for (let i = 0; i < n; i++) {
    switch (int(14)) {
      case 0: s += pick(['\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t']); break;
      case 1: s += '\\u' + hex4(int(0x20)); break; // escaped controls
      case 2: s += '\\u' + hex4(0xd800 + int(0x800)); break; // lone or accidental surrogates
      case 3: { const cp = 0x10000 + int(0xfffff); const hi = 0xd800 + ((cp - 0x10000) >> 10); const lo = 0xdc00 + ((cp - 0x10000) & 0x3ff); s += '\\u' + (rnd() < 0.5 ? hex4(hi) : hex4(hi).toUpperCase()) + '\\u' + hex4(lo); break; }
      case 4: s += '\\u' + hex4(int(0x10000)); break;
      case 5: s += pick(['é', '☕', '😀', '\u2028', '\u2029', '\u007f', 'ß', '中文', '\ufeff', '\u0085']); break;
      case 6: s += String.fromCodePoint(0x80 + int(0xd000)); break;
      case 7: s += '\\u00' + hex4(int(256)).slice(2).toUpperCase(); break;
      default: s += String.fromCharCode(0x20 + int(0x5f)).replace(/["\\]/, 'x');
    }
  }
  return s;
}

function key() {
  if (rnd() < 0.35) return pick(['0', '1', '2', '10', '01', '-1', '1.5', '4294967294', '4294967295', '4294967296', '99', '007', 'id', 'type', 'data', '__proto__', 'constructor', '']);
  return stringBody();
}

function value(depth) {
  const r = rnd();
  if (depth > 5 || r < 0.3) return pick([number, number, () => `"${stringBody()}"`, () => pick(['true', 'false', 'null'])])();
  if (r < 0.6) {
    const items = Array.from({ length: int(6) }, () => ws() + value(depth + 1) + ws());
    return `[${items.join(',')}]`;
  }
  const keys = Array.from({ length: int(8) }, key);
  if (keys.length && rnd() < 0.3) keys.push(pick(keys)); // duplicate key
  return `{${keys.map((k) => `${ws()}"${k}"${ws()}:${ws()}${value(depth + 1)}${ws()}`).join(',')}}`;
}

const curated = [
  '{"b":1,"a":2,"b":3}', '{"2":"x","1":"y","a":"z","0":"w"}', '{"1e3":1,"1000":2}',
  '[1e21, 1e-7, -0, 0.1, 123e-20, 1E400, -1e400, 5e-324]', '"\\ud800"', '"\\udc00\\ud800"',
  '{"\\u0061":1,"a":2}', '{"__proto__":{"x":1}}', '  {"a" : [ ] , "b" : { } }  ', '\ufeff{"bom":true}',
  '{"amount":2500.00,"currency":"PKR"}', '[1,]', '{"a":1,}', '', 'nul', '[01]',
  // Deep nesting that Node signs without complaint (its JSON.stringify gives up somewhere
  // between 4,096 and 6,000 levels): 2,000 levels of reordered keys and numbers, 4,096 arrays.
  '{"id":"evt_deep","data":' + '{ "z" : 1.0 , "1":[ '.repeat(1000) + '-0' + ' ] }'.repeat(1000) + '}',
  '['.repeat(4096) + ']'.repeat(4096),
];

const decoder = new TextDecoder('utf-8');
const cases = [];
function add(bytes) {
  let canonical = null;
  try { canonical = JSON.stringify(JSON.parse(decoder.decode(bytes))); } catch { /* JSON.parse threw */ }
  cases.push({
    body_b64: Buffer.from(bytes).toString('base64'),
    canonical_b64: canonical === null ? null : Buffer.from(canonical).toString('base64'),
    seed_signature: canonical === null ? null : crypto.createHmac('sha256', SECRET).update(canonical).digest('hex'),
  });
}
curated.forEach((text) => add(Buffer.from(text)));
for (let i = 0; i < count; i++) {
  let bytes = Buffer.from(ws() + value(0) + ws());
  if (rnd() < 0.05) { // invalid UTF-8 spliced into the text (often inside a string)
    const at = int(bytes.length + 1);
    bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from([pick([0xff, 0xc3, 0xe2, 0xed, 0xf0, 0x80])]), bytes.subarray(at)]);
  }
  if (rnd() < 0.02) bytes = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes]);
  add(bytes);
}
process.stdout.write(JSON.stringify({ generator: 'compat-corpus.mjs', seed, secret: SECRET, cases }));
