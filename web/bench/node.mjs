// verify() of a 1 KiB payflow v1 webhook in Node, next to a hand-written node:crypto check
// (createHmac over "{t}.{body}", hex, timingSafeEqual: what a merchant writes), in one run.
import crypto from 'node:crypto';
import { verify } from '../pkg/index.js';
import { SECRET, T, body1k, compare } from './workload.mjs';

const body = body1k();
const mac = crypto.createHmac('sha256', SECRET).update(`${T}.`).update(body).digest('hex');
const headers = { 'x-payflow-signature': `t=${T},v1=${mac}` };
const options = { scheme: 'payflow', secrets: [SECRET], headers, body, now: T };
if (!verify(options).ok) throw new Error('the benchmark webhook does not verify');

const handWritten = () => {
  const header = headers['x-payflow-signature'];
  const t = header.slice(2, header.indexOf(','));
  const given = Buffer.from(header.slice(header.indexOf('v1=') + 3), 'hex');
  const expected = crypto.createHmac('sha256', SECRET).update(`${t}.`).update(body).digest();
  return given.length === expected.length && crypto.timingSafeEqual(given, expected) && Math.abs(T - Number(t)) <= 300;
};
if (!handWritten()) throw new Error('the hand-written check disagrees');

const r = await compare({ 'payflow-verify (wasm)': () => verify(options).ok, 'node:crypto': handWritten });
console.log(JSON.stringify({ runtime: `Node ${process.versions.node}`, ...r }));
